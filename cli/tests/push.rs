//! `push` end to end against a real S3 implementation on loopback (moto's server, installed by
//! `scripts/test`): the bucket is read back by the independent `cvmfs` crate over plain HTTP,
//! a push killed before its manifest leaves the bucket at the old revision and a rerun
//! finishes it, a bucket ahead of the local storage (or at its revision with another tree) is
//! refused, `--delete` after `gc` removes from the bucket what the storage no longer holds but
//! never what a kept revision references, root files changed without a new manifest (`resign`)
//! go up, the reflog goes up only after the manifest it belongs to (and a rerun repairs a
//! reflog and status left behind it), killed pushes' multipart uploads are aborted, and
//! credentials come from the AWS profile files when the environment has none.

mod common;

use common::{
    assert_manifest_verifies, assert_served_matches_source, noise, on_terminal, Env, FQRN,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "cvmfs-push-test";

/// A loopback port nothing listens on (the moment it is returned).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// moto's S3 server on a free loopback port, stopped when dropped.
struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    fn start() -> S3Server {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]'; ./scripts/test installs it)");
        let server = S3Server { child, port };
        // The port opens before moto answers: until then a connection may be reset.
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = server.try_request("PUT", &format!("/{BUCKET}"), "") {
            assert!(Instant::now() < deadline, "moto_server did not start: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The witness retries a missing replication marker for ~24 s (see
        // `fixtures::witness::REPLICATION_MARKERS`); empty ones mean "no replication".
        for prefix in ["repo", "mirror/two", "auto"] {
            for marker in fixtures::witness::REPLICATION_MARKERS {
                let path = format!("/{BUCKET}/{prefix}/{marker}");
                server.request("PUT", &path, "x-amz-acl: public-read\r\n");
            }
        }
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where clients read the repository pushed to `prefix`.
    fn url(&self, prefix: &str) -> String {
        format!("{}/{BUCKET}/{prefix}", self.endpoint())
    }

    /// One plain HTTP request (moto takes unsigned ones for bucket creation); returns the
    /// body; panics on a status other than 200.
    fn request(&self, method: &str, path: &str, headers: &str) -> Vec<u8> {
        self.try_request(method, path, headers).unwrap()
    }

    /// [`S3Server::request`], with connection errors returned rather than panicking.
    fn try_request(&self, method: &str, path: &str, headers: &str) -> std::io::Result<Vec<u8>> {
        self.try_request_with_body(method, path, headers, b"")
    }

    /// One plain HTTP request with a body; returns the response body; panics on a status
    /// other than 200.
    fn try_request_with_body(
        &self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )?;
        s.write_all(body)?;
        let mut response = Vec::new();
        s.read_to_end(&mut response)?;
        let head_end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("closed before a response head"))?;
        let head = String::from_utf8_lossy(&response[..head_end]).to_string();
        assert!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "{head}"
        );
        Ok(response[head_end + 4..].to_vec())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn push_cmd(env: &Env, s3: &S3Server, prefix: &str, extra: &[&str]) -> Command {
    push_cmd_for(env, FQRN, s3, prefix, extra)
}

/// `cmd` with the credentials and endpoint of `s3` in its environment.
fn with_s3(mut cmd: Command, s3: &S3Server) -> Command {
    cmd.env("AWS_ACCESS_KEY_ID", "test-key-id")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", s3.endpoint());
    cmd
}

fn push_cmd_for(env: &Env, fqrn: &str, s3: &S3Server, prefix: &str, extra: &[&str]) -> Command {
    let target = format!("s3://{BUCKET}/{prefix}");
    let mut args = vec![
        "--json",
        "push",
        fqrn,
        &target,
        "--allow-http",
        "--public-read",
    ];
    args.extend_from_slice(extra);
    with_s3(env.cmd(&args), s3)
}

fn push(env: &Env, s3: &S3Server, prefix: &str, extra: &[&str]) -> serde_json::Value {
    let out = push_cmd(env, s3, prefix, extra).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "push failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("test-secret"),
        "credentials printed: {stdout}"
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn push_fails(env: &Env, s3: &S3Server, prefix: &str, crash: Option<&str>) -> String {
    let mut cmd = push_cmd(env, s3, prefix, &[]);
    if let Some(point) = crash {
        cmd.env("CVMFS_OCI_CRASH_AT", point);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "push succeeded");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn publish(env: &Env, dir: &Path) {
    env.ok(&["publish", FQRN, dir.to_str().unwrap()]);
}

fn remote_manifest(s3: &S3Server, prefix: &str) -> Vec<u8> {
    s3.request("GET", &format!("/{BUCKET}/{prefix}/.cvmfspublished"), "")
}

fn local_manifest(env: &Env) -> Vec<u8> {
    std::fs::read(env.storage.join(".cvmfspublished")).unwrap()
}

#[test]
fn a_repository_pushed_to_s3_reads_back_and_moves_on_only_when_complete() {
    let s3 = S3Server::start();
    let env = Env::init(&["--gc"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    fixtures::write_sample_tree(&src).unwrap();
    std::fs::write(src.join("big.bin"), noise(9 << 20, 3)).unwrap();
    publish(&env, &src);

    let first = push(&env, &s3, "repo", &[]);
    assert!(first["remote_revision"].is_null(), "{first}");
    assert_eq!(first["revision"], 2);
    assert_eq!(first["manifest_written"], true);
    let uploaded = first["objects_uploaded"].as_u64().unwrap();
    assert!(uploaded >= 5, "{first}");
    assert_eq!(remote_manifest(&s3, "repo"), local_manifest(&env));
    assert_served_matches_source(&env, &s3.url("repo"), &src, "");
    // The tree of revision 2, for reading it back later (cp keeps modes, times and links).
    let kept_src = env.path("src-2");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&kept_src)
        .status()
        .unwrap();
    assert!(cp.success());

    // Revision 3, pushed by a run killed before the manifest: the bucket still serves 2.
    std::fs::remove_file(src.join("big.bin")).unwrap();
    std::fs::write(src.join("new.txt"), "revision 3\n").unwrap();
    publish(&env, &src);
    push_fails(&env, &s3, "repo", Some("push-before-manifest"));
    assert_served_matches_source(&env, &s3.url("repo"), &kept_src, "");
    // The rerun finds the objects there and writes the manifest.
    let rerun = push(&env, &s3, "repo", &[]);
    assert_eq!(rerun["remote_revision"], 2);
    assert_eq!(rerun["objects_uploaded"], 0, "{rerun}");
    assert!(
        rerun["objects_present"].as_u64().unwrap() > uploaded,
        "{rerun}"
    );
    assert_eq!(rerun["manifest_written"], true);
    assert_served_matches_source(&env, &s3.url("repo"), &src, "");
    let again = push(&env, &s3, "repo", &[]);
    assert_eq!(again["manifest_written"], false, "{again}");
    assert_eq!(again["objects_uploaded"], 0, "{again}");

    // After gc the storage no longer holds big.bin's chunks; --delete removes them there too.
    let gc = env.ok(&["--json", "gc", FQRN, "--keep-revisions", "0"]);
    assert!(gc.contains("\"objects_deleted\""), "{gc}");
    let pruned = push(&env, &s3, "repo", &["--delete"]);
    assert_eq!(pruned["revision"], 3);
    assert_eq!(
        pruned["manifest_written"], true,
        "gc re-signed the manifest"
    );
    assert!(pruned["objects_deleted"].as_u64().unwrap() >= 3, "{pruned}");
    assert_eq!(remote_manifest(&s3, "repo"), local_manifest(&env));
    assert_manifest_verifies(&env); // the bytes the bucket serves, checked by openssl
    assert_served_matches_source(&env, &s3.url("repo"), &src, "");
    // What an operator runs against the bucket: `check --full` over its public URL.
    let key = env.home.join(FQRN).join("keys").join(format!("{FQRN}.pub"));
    let url = s3.url("repo");
    let args = ["check", FQRN, "--full", "--storage", &url, "--key"];
    env.ok(&[&args[..], &[key.to_str().unwrap()]].concat());

    // Another repository at revision 2 may not take the bucket back.
    let other = Env::init(&[]);
    publish(&other, &kept_src);
    let err = push_fails(&other, &s3, "repo", None);
    assert!(
        err.contains("serves revision 3, newer than the local revision 2"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_served_matches_source(&env, &s3.url("repo"), &src, "");
    // Nor may another repository take its place.
    let storage = env.path("storage-other");
    env.ok(&[
        "init",
        "other.cvmfs-oci.local",
        "--storage",
        storage.to_str().unwrap(),
    ]);
    let out = push_cmd_for(&env, "other.cvmfs-oci.local", &s3, "repo", &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "holds repository {FQRN}, not other.cvmfs-oci.local"
        )),
        "{err}"
    );
    // A fresh prefix is a fresh repository.
    let elsewhere = push(&other, &s3, "mirror/two", &[]);
    assert!(elsewhere["remote_revision"].is_null(), "{elsewhere}");
    assert_served_matches_source(&other, &s3.url("mirror/two"), &kept_src, "");
}

#[test]
fn push_errors_are_one_line_and_change_nothing() {
    let env = Env::init(&[]);
    let before = env.snapshot();
    let err = env.fails(&["push", FQRN, "http://bucket/prefix"]);
    assert!(err.contains("expected s3://BUCKET[/PREFIX]"), "{err}");
    // Nothing listens on this port: the error names the bucket and the key.
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = env
        .cmd(&["push", FQRN, "s3://nowhere/repo", "--allow-http"])
        .env("AWS_ACCESS_KEY_ID", "test-key-id")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("s3://nowhere/repo/.cvmfspublished"), "{err}");
    assert!(!err.contains("test-secret"), "{err}");
    // A plain-HTTP endpoint without --allow-http: the option is named.
    for (flag, value) in [("--endpoint", endpoint.as_str()), ("", "")] {
        let mut args = vec!["push", FQRN, "s3://nowhere/repo"];
        if !flag.is_empty() {
            args.extend([flag, value]);
        }
        let out = env
            .cmd(&args)
            .env("AWS_ACCESS_KEY_ID", "test-key-id")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret")
            .env("AWS_ENDPOINT_URL", &endpoint)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!(
                "endpoint {endpoint} is plain HTTP, refused without --allow-http"
            )),
            "{err}"
        );
    }
    // A held repository lock: --no-wait fails at once; without it the push says once that
    // it waits (then goes on, here to the endpoint nothing listens on).
    let mut holder = common::lock_holder(&env.home.join(FQRN).join("lock"));
    let push = |extra: &[&str]| {
        let args = [extra, &["push", FQRN, "s3://nowhere/repo", "--allow-http"]].concat();
        let mut cmd = env.cmd(&args);
        cmd.env("AWS_ACCESS_KEY_ID", "test-key-id")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret")
            .env("AWS_ENDPOINT_URL", &endpoint);
        cmd
    };
    let out = push(&["--no-wait"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another process"),
        "{err}"
    );
    let mut waiting = push(&[]).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    assert!(first.starts_with("waiting for the lock"), "{first}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(!waiting.wait().unwrap().success());
    assert!(rest.contains("s3://nowhere/repo/.cvmfspublished"), "{rest}");
    assert_eq!(env.snapshot(), before);
}

#[test]
fn an_object_too_large_for_one_put_goes_up_in_parts() {
    // Without chunking a 70 MiB file is one object of about that size: a multipart upload.
    let s3 = S3Server::start();
    let env = Env::init(&["--no-chunking"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("large.bin"), noise(70 << 20, 11)).unwrap();
    std::fs::write(src.join("small.txt"), "small\n").unwrap();
    publish(&env, &src);
    let r = push(&env, &s3, "repo", &[]);
    assert_eq!(r["multipart_uploads"], 1, "{r}");
    assert!(r["bytes_uploaded"].as_u64().unwrap() > 70 << 20, "{r}");
    assert_served_matches_source(&env, &s3.url("repo"), &src, "");
}

/// Runs `args` with the S3 credentials in the environment; returns stdout (must succeed).
fn ok_with_s3(env: &Env, s3: &S3Server, args: &[&str]) -> String {
    let out = with_s3(env.cmd(args), s3).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn served_revision(env: &Env, s3: &S3Server, prefix: &str) -> u32 {
    let cache = env.path("revision-cache");
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&cache).unwrap();
    fixtures::witness::witness_read(&s3.url(prefix), &cache)
        .unwrap()
        .revision
}

#[test]
fn every_new_revision_goes_to_the_push_target_until_it_is_forgotten() {
    let s3 = S3Server::start();
    let env = Env::init(&[]);
    let src = publish_one_file(&env);
    let out = push_cmd(&env, &s3, "auto", &["--auto"]).output().unwrap();
    assert!(out.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["action"], "push");
    assert_eq!(events[0]["revision"], 2, "{events:?}");
    assert_eq!(events[1]["action"], "push-target");
    assert_eq!(events[1]["target"], "s3://cvmfs-push-test/auto");

    // A publish and a conversion each end with a push of their revision. On a terminal the
    // push shows a bar of the objects uploaded (then clears it).
    std::fs::write(src.join("b.txt"), "b\n").unwrap();
    let publish = env.cmd(&["publish", FQRN, src.to_str().unwrap()]);
    let out = on_terminal(&with_s3(publish, &s3));
    assert!(
        out.contains("-> s3://cvmfs-push-test/auto: revision 3 (was revision 2)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{FQRN}: push to s3://cvmfs-push-test/auto"))
            && out.contains(" objects"),
        "no push progress: {out:?}"
    );
    assert_served_matches_source(&env, &s3.url("auto"), &src, "");
    let layout = env.path("layout");
    let mut image = fixtures::oci::ImageBuilder::new();
    for layer in fixtures::layers::edge_case_layers() {
        image = image.layer(layer, fixtures::oci::Compression::Gzip);
    }
    image.write_layout(&layout, "v1").unwrap();
    let oci = format!("oci:{}:v1", layout.display());
    ok_with_s3(&env, &s3, &["convert", FQRN, &oci]);
    assert_eq!(served_revision(&env, &s3, "auto"), 4);
    let again = ok_with_s3(&env, &s3, &["push", FQRN]);
    assert!(again.contains("already at revision 4"), "{again}");

    // Without credentials the revision stands locally and the command says what to rerun.
    // (The instance-metadata credentials an EC2 host would have are asked of a closed
    // loopback port, never of the real link-local address.)
    std::fs::write(src.join("c.txt"), "c\n").unwrap();
    let closed = free_port();
    let out = env
        .cmd(&["publish", FQRN, src.to_str().unwrap()])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_PROFILE")
        .env("AWS_SHARED_CREDENTIALS_FILE", env.path("no-credentials"))
        .env("AWS_CONFIG_FILE", env.path("no-config"))
        .env(
            "AWS_METADATA_ENDPOINT",
            format!("http://127.0.0.1:{closed}"),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("revision 5 is published locally, but its push"),
        "{err}"
    );
    assert!(
        err.contains("no credentials found: push reads AWS_ACCESS_KEY_ID")
            && err.contains("the profile AWS_PROFILE (default: default) of ~/.aws/credentials"),
        "{err}"
    );
    assert_eq!(env.revision(), 5);
    assert_eq!(served_revision(&env, &s3, "auto"), 4);
    // The job's retry changes nothing locally, and still brings the bucket up to date.
    let retry = ok_with_s3(&env, &s3, &["publish", FQRN, src.to_str().unwrap()]);
    assert!(
        retry.contains("-> s3://cvmfs-push-test/auto: revision 5 (was revision 4)"),
        "{retry}"
    );
    assert_eq!(served_revision(&env, &s3, "auto"), 5);
    // Up to date: nothing more is said.
    let quiet = ok_with_s3(&env, &s3, &["publish", FQRN, src.to_str().unwrap()]);
    assert!(!quiet.contains("s3://"), "{quiet}");
    let again = ok_with_s3(&env, &s3, &["push", FQRN]);
    assert!(again.contains("already at revision 5"), "{again}");

    // Forgotten: publishes stay local.
    ok_with_s3(&env, &s3, &["push", FQRN, "--no-auto"]);
    std::fs::write(src.join("d.txt"), "d\n").unwrap();
    ok_with_s3(&env, &s3, &["publish", FQRN, src.to_str().unwrap()]);
    assert_eq!(env.revision(), 6);
    assert_eq!(served_revision(&env, &s3, "auto"), 5);
    let err = env.fails(&["push", FQRN]);
    assert!(
        err.contains("no target given and the repository has none"),
        "{err}"
    );
}

fn remote_file(s3: &S3Server, prefix: &str, name: &str) -> Vec<u8> {
    s3.request("GET", &format!("/{BUCKET}/{prefix}/{name}"), "")
}

fn local_file(env: &Env, name: &str) -> Vec<u8> {
    std::fs::read(env.storage.join(name)).unwrap()
}

/// `check --storage URL`: what a stratum 1 verifies (the reflog against the manifest's `Y`
/// included).
fn check_bucket(env: &Env, s3: &S3Server, prefix: &str) {
    let key = env.home.join(FQRN).join("keys").join(format!("{FQRN}.pub"));
    let url = s3.url(prefix);
    let args = ["check", FQRN, "--storage", &url, "--key"];
    env.ok(&[&args[..], &[key.to_str().unwrap()]].concat());
}

#[test]
fn root_files_follow_the_manifest_and_the_bucket_stays_consistent() {
    let s3 = S3Server::start();
    let env = Env::init(&[]);
    // As `cvmfs_server mkfs`: a stratum 1 may replicate the storage, and the bucket.
    assert!(env.storage.join(".cvmfs_master_replica").is_file());
    let src = publish_one_file(&env);
    push(&env, &s3, "repo", &[]);
    assert_eq!(
        remote_file(&s3, "repo", ".cvmfs_master_replica"),
        local_file(&env, ".cvmfs_master_replica")
    );

    // `resign` renews the whitelist without a new manifest: push still takes it up.
    env.ok(&["resign", FQRN, "--days", "90"]);
    assert_ne!(
        remote_file(&s3, "repo", ".cvmfswhitelist"),
        local_file(&env, ".cvmfswhitelist")
    );
    let resigned = push(&env, &s3, "repo", &[]);
    assert_eq!(resigned["manifest_written"], false, "{resigned}");
    assert_eq!(resigned["root_files_written"][0], ".cvmfswhitelist");
    assert_eq!(
        remote_file(&s3, "repo", ".cvmfswhitelist"),
        local_file(&env, ".cvmfswhitelist")
    );

    // A push that stops before its manifest has not replaced the reflog the served manifest's
    // Y names: the bucket still passes check.
    let reflog_2 = remote_file(&s3, "repo", ".cvmfsreflog");
    std::fs::write(src.join("b.txt"), "b\n").unwrap();
    publish(&env, &src);
    push_fails(&env, &s3, "repo", Some("push-before-manifest"));
    assert_eq!(remote_file(&s3, "repo", ".cvmfsreflog"), reflog_2);
    check_bucket(&env, &s3, "repo");
    // One that stops right after its manifest leaves the reflog behind; the rerun, with the
    // manifest current, uploads it.
    push_fails(&env, &s3, "repo", Some("push-after-manifest"));
    assert_eq!(remote_manifest(&s3, "repo"), local_manifest(&env));
    assert_eq!(remote_file(&s3, "repo", ".cvmfsreflog"), reflog_2);
    let rerun = push(&env, &s3, "repo", &[]);
    assert_eq!(rerun["manifest_written"], false, "{rerun}");
    assert_eq!(
        remote_file(&s3, "repo", ".cvmfsreflog"),
        local_file(&env, ".cvmfsreflog")
    );
    check_bucket(&env, &s3, "repo");

    // The reply to the manifest's put is lost and the retry fails its condition against the
    // manifest it wrote: that is success.
    std::fs::write(src.join("c.txt"), "c\n").unwrap();
    publish(&env, &src);
    let out = push_cmd(&env, &s3, "repo", &[])
        .env("CVMFS_OCI_CRASH_AT", "push-manifest-reply-lost")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(remote_manifest(&s3, "repo"), local_manifest(&env));
    check_bucket(&env, &s3, "repo");
    assert_served_matches_source(&env, &s3.url("repo"), &src, "");
}

#[test]
fn a_bucket_revision_is_replaced_only_by_the_same_tree() {
    let s3 = S3Server::start();
    let a = Env::init(&[]);
    let keys = a.home.join(FQRN).join("keys");
    let b = Env::init(&["--keys", keys.to_str().unwrap()]);
    for (env, who) in [(&a, "A"), (&b, "B")] {
        let src = env.path("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("who"), who).unwrap();
        publish(env, &src);
    }
    push(&a, &s3, "repo", &[]);
    let err = push_fails(&b, &s3, "repo", None);
    assert!(
        err.contains("serves another revision 2 (root catalog"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(remote_manifest(&s3, "repo"), local_manifest(&a));
}

/// A repository of the same name with other keys (`init` where `init --existing` was meant)
/// never replaces the bucket, however new its revision: the bucket's clients trust the other
/// master key. The same keys in another home do, with a newer revision.
#[test]
fn a_bucket_signed_by_another_master_key_is_not_replaced() {
    let s3 = S3Server::start();
    let a = Env::init(&[]);
    let keys = a.home.join(FQRN).join("keys");
    let same_keys = Env::init(&["--keys", keys.to_str().unwrap()]);
    let other_keys = Env::init(&[]);
    for (env, who) in [(&a, "A"), (&same_keys, "B"), (&other_keys, "C")] {
        let src = env.path("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("who"), who).unwrap();
        publish(env, &src);
    }
    push(&a, &s3, "repo", &[]);
    for env in [&same_keys, &other_keys] {
        let src = env.path("src");
        std::fs::write(src.join("more"), "newer").unwrap();
        publish(env, &src);
        assert_eq!(env.revision(), 3);
    }
    let err = push_fails(&other_keys, &s3, "repo", None);
    assert!(err.contains("signed by another master key"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(remote_manifest(&s3, "repo"), local_manifest(&a));
    push(&same_keys, &s3, "repo", &[]);
    assert_eq!(remote_manifest(&s3, "repo"), local_manifest(&same_keys));
    // Checked with the key its clients have (A's home holds it).
    check_bucket(&a, &s3, "repo");
}

/// Object files (`data/XX/…`) of the storage.
fn object_files(env: &Env) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for dir in std::fs::read_dir(env.storage.join("data")).unwrap() {
        let dir = dir.unwrap();
        let prefix = dir.file_name().to_string_lossy().to_string();
        if prefix.len() != 2 {
            continue;
        }
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let file = f.unwrap().file_name().to_string_lossy().to_string();
            names.insert(format!("data/{prefix}/{file}"));
        }
    }
    names
}

/// Publishes `src` and returns the one file object (no suffix) the revision added.
fn publish_adding_one_file(env: &Env, src: &Path) -> String {
    let before = object_files(env);
    publish(env, src);
    let added: Vec<String> = object_files(env)
        .difference(&before)
        .filter(|n| n.len() == "data/xx/".len() + 38)
        .cloned()
        .collect();
    assert_eq!(added.len(), 1, "{added:?}");
    added[0].clone()
}

#[test]
fn objects_the_storage_lost_are_neither_served_nor_deleted() {
    let s3 = S3Server::start();
    let env = Env::init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("keep.txt"), "kept in every revision\n").unwrap();
    let keep = publish_adding_one_file(&env, &src);
    std::fs::write(src.join("old.txt"), "only in revision 3\n").unwrap();
    let old = publish_adding_one_file(&env, &src);
    std::fs::remove_file(src.join("old.txt")).unwrap();
    publish(&env, &src);
    push(&env, &s3, "repo", &[]);
    let remote_object = |name: &str| {
        s3.try_request("GET", &format!("/{BUCKET}/repo/{name}"), "")
            .unwrap()
    };

    // Lost locally but referenced by a revision the storage keeps (3): --delete spares it.
    std::fs::remove_file(env.storage.join(&old)).unwrap();
    let pruned = push(&env, &s3, "repo", &["--delete"]);
    assert_eq!(pruned["objects_deleted"], 0, "{pruned}");
    assert_eq!(pruned["objects_spared"], 1, "{pruned}");
    remote_object(&old);

    // Lost locally and referenced by the revision to push: refused, with --delete or without
    // (a publish would have stored it again, so it is lost after the publish).
    std::fs::write(src.join("new.txt"), "revision 5\n").unwrap();
    publish(&env, &src);
    std::fs::remove_file(env.storage.join(&keep)).unwrap();
    let hash = keep.replace("data/", "").replace('/', "");
    for extra in [&[][..], &["--delete"]] {
        let out = push_cmd(&env, &s3, "repo", extra).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!(
                "revision 5: 1 object(s) it references are missing from the storage, first \
                 {hash}"
            )),
            "{err}"
        );
    }
    remote_object(&keep);
    assert_eq!(served_revision(&env, &s3, "repo"), 4);
}

/// Puts `bytes` as root file `name` of the bucket's repository at `prefix` (as a crash or an
/// older push would have left it).
fn put_remote_file(s3: &S3Server, prefix: &str, name: &str, bytes: &[u8]) {
    let path = format!("/{BUCKET}/{prefix}/{name}");
    s3.try_request_with_body("PUT", &path, "x-amz-acl: public-read\r\n", bytes)
        .unwrap();
}

#[test]
fn a_rerun_repairs_a_reflog_and_status_left_behind_the_manifest() {
    let s3 = S3Server::start();
    let env = Env::init(&["--gc"]);
    let src = publish_one_file(&env);
    env.ok(&["gc", FQRN, "--keep-revisions", "0"]); // writes .cvmfs_status.json
    push(&env, &s3, "repo", &[]);
    let old_reflog = remote_file(&s3, "repo", ".cvmfsreflog");
    assert_eq!(old_reflog, local_file(&env, ".cvmfsreflog"));

    std::fs::write(src.join("b.txt"), "b\n").unwrap();
    publish(&env, &src);
    push(&env, &s3, "repo", &[]);
    check_bucket(&env, &s3, "repo");
    // A push that died between its manifest and its reflog (and status): the bucket serves
    // the new manifest with the old reflog, which a stratum 1's check flags.
    put_remote_file(&s3, "repo", ".cvmfsreflog", &old_reflog);
    let old_status = b"{\n  \"last_gc\": \"Thu Jan  1 00:00:00 UTC 1970\"\n}\n";
    put_remote_file(&s3, "repo", ".cvmfs_status.json", old_status);
    let key = env.home.join(FQRN).join("keys").join(format!("{FQRN}.pub"));
    let url = s3.url("repo");
    let check = [
        "check",
        FQRN,
        "--storage",
        &url,
        "--key",
        key.to_str().unwrap(),
    ];
    let out = env.run(&check);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success() && said.contains("reflog"), "{said}");

    // A rerun with nothing new puts both back and leaves the manifest alone.
    let rerun = push(&env, &s3, "repo", &[]);
    assert_eq!(rerun["manifest_written"], false, "{rerun}");
    assert_eq!(rerun["objects_uploaded"], 0, "{rerun}");
    let written = rerun["root_files_written"].to_string();
    assert!(
        written.contains(".cvmfsreflog") && written.contains(".cvmfs_status.json"),
        "{rerun}"
    );
    assert_eq!(
        remote_file(&s3, "repo", ".cvmfsreflog"),
        local_file(&env, ".cvmfsreflog")
    );
    assert_eq!(
        remote_file(&s3, "repo", ".cvmfs_status.json"),
        local_file(&env, ".cvmfs_status.json")
    );
    assert_eq!(remote_manifest(&s3, "repo"), local_manifest(&env));
    check_bucket(&env, &s3, "repo");
    let again = push(&env, &s3, "repo", &[]);
    assert_eq!(
        again["root_files_written"],
        serde_json::json!([]),
        "{again}"
    );
}

/// Starts a multipart upload of `key` in the bucket and uploads one part without completing
/// it (what a push killed during a large object leaves); returns the upload id.
fn start_multipart_upload(s3: &S3Server, key: &str) -> String {
    let reply = s3
        .try_request_with_body("POST", &format!("/{BUCKET}/{key}?uploads"), "", b"")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    let id = reply
        .split("<UploadId>")
        .nth(1)
        .and_then(|rest| rest.split("</UploadId>").next())
        .unwrap_or_else(|| panic!("no UploadId in {reply}"))
        .to_string();
    let part = format!("/{BUCKET}/{key}?partNumber=1&uploadId={id}");
    s3.try_request_with_body("PUT", &part, "", &noise(64 << 10, 5))
        .unwrap();
    id
}

/// Publishes a tree of one file (`a.txt`) from `env`'s `src` directory, which it returns.
fn publish_one_file(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "a\n").unwrap();
    publish(env, &src);
    src
}

/// The keys of the bucket's incomplete multipart uploads.
fn incomplete_uploads(s3: &S3Server) -> String {
    String::from_utf8_lossy(&s3.request("GET", &format!("/{BUCKET}?uploads"), "")).to_string()
}

#[test]
fn a_push_aborts_the_multipart_uploads_killed_pushes_left() {
    let s3 = S3Server::start();
    let env = Env::init(&[]);
    publish_one_file(&env);
    // moto dates every upload 2010-11-10, so each of these is older than a day: what decides
    // is whose it is. (The age limit is tested against a stand-in in the publisher's tests.)
    let hex = "0123456789abcdef0123456789abcdef012345";
    let killed = format!("repo/data/ab/{hex}");
    let not_an_object = "repo/notes/big.bin".to_string();
    let other_repository = format!("mirror/two/data/ab/{hex}");
    for key in [&killed, &not_an_object, &other_repository] {
        start_multipart_upload(&s3, key);
    }
    assert!(incomplete_uploads(&s3).contains(&killed));

    let first = push(&env, &s3, "repo", &[]);
    assert_eq!(first["stale_uploads_aborted"], 1, "{first}");
    assert!(first.get("stale_uploads_error").is_none(), "{first}");
    let left = incomplete_uploads(&s3);
    assert!(!left.contains(&killed), "{left}");
    assert!(
        left.contains(&not_an_object) && left.contains(&other_repository),
        "{left}"
    );
    // Also when there is nothing else to do, and it is said.
    start_multipart_upload(&s3, &killed);
    let target = format!("s3://{BUCKET}/repo");
    let args = ["push", FQRN, &target, "--allow-http"];
    let out = ok_with_s3(&env, &s3, &args);
    assert!(
        out.contains("revision 2 (was revision 2)")
            && out.contains(
                "manifest unchanged, 1 stale multipart uploads (of killed pushes) aborted"
            ),
        "{out}"
    );
    assert!(!incomplete_uploads(&s3).contains(&killed));
    let out = ok_with_s3(&env, &s3, &args);
    assert!(out.contains("already at revision 2"), "{out}");
}

/// moto, a repository with one published file, and the AWS credentials file (profile `ci`,
/// keys `profile-key-id`/`profile-secret`) and config file path (to be written) of its home.
fn with_ci_profile() -> (S3Server, Env, std::path::PathBuf, std::path::PathBuf) {
    let s3 = S3Server::start();
    let env = Env::init(&[]);
    publish_one_file(&env);
    let credentials = env.path("aws-credentials");
    std::fs::write(
        &credentials,
        "[ci]\naws_access_key_id = profile-key-id\naws_secret_access_key = profile-secret\n",
    )
    .unwrap();
    let config = env.path("aws-config");
    (s3, env, credentials, config)
}

#[test]
fn credentials_come_from_the_aws_profile_when_the_environment_has_none() {
    let (s3, env, credentials, config) = with_ci_profile();
    // A credential_process helper that counts its runs, and one that fails saying a secret.
    let runs = env.path("helper-runs");
    let helper = env.path("helper.sh");
    let answer = r#"{"Version": 1, "AccessKeyId": "proc-key-id", "SecretAccessKey": "proc-secret", "SessionToken": "proc-token", "Expiration": "2099-01-01T00:00:00Z"}"#;
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = \"two words\" ] || exit 9\necho run >> '{}'\necho '{answer}'\n",
        runs.display()
    );
    let failing = env.path("failing.sh");
    for (path, text) in [
        (&helper, script.as_str()),
        (
            &failing,
            "#!/bin/sh\necho proc-secret-in-stderr >&2\necho proc-secret\nexit 3\n",
        ),
    ] {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    std::fs::write(
        &config,
        format!(
            "[profile ci]\nregion = us-east-1\n[profile proc]\nregion = us-east-1\n\
             credential_process = {} \"two words\"\n[profile failing]\nregion = us-east-1\n\
             credential_process = {}\n[profile role]\nregion = us-east-1\n\
             role_arn = arn:aws:iam::123456789012:role/cvmfs-push\nsource_profile = ci\n\
             role_session_name = cvmfs-test\nexternal_id = ext-1\n\
             [profile orphan]\nrole_arn = arn:aws:iam::123456789012:role/x\n",
            helper.display(),
            failing.display()
        ),
    )
    .unwrap();
    // Without credentials the client would ask the instance metadata: a closed port here.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let files = (credentials.as_path(), config.as_path());
    let run_to = |profile: &str, prefix: &str| {
        push_as_profile(
            &env,
            &s3,
            files,
            profile,
            prefix,
            &[("AWS_METADATA_ENDPOINT", &closed)],
        )
    };
    let run = |profile: &str| run_to(profile, "repo");

    let out = run("nosuch");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "AWS profile 'nosuch' (AWS_PROFILE) is in neither {} nor {}",
            credentials.display(),
            config.display()
        )),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("profile-secret"), "{err}");

    let out = run("ci");
    let all = output_text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("profile-secret"), "{all}");
    assert_eq!(remote_manifest(&s3, "repo"), local_manifest(&env));

    // credential_process: run once for the whole push (its credentials last), never shown.
    let out = run_to("proc", "proc");
    let all = output_text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        !all.contains("proc-secret") && !all.contains("proc-token"),
        "{all}"
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
    assert_eq!(remote_manifest(&s3, "proc"), local_manifest(&env));

    let out = run_to("failing", "failing");
    let err = failed_in_one_line(&out);
    assert!(
        err.contains("credential_process of AWS profile 'failing' in")
            && err.contains("failed (exit status: 3)"),
        "{err}"
    );
    assert!(!err.contains("proc-secret"), "{err}");

    // role_arn: STS AssumeRole (moto's, at the same endpoint) signed with the source
    // profile's keys; the role's credentials sign the push and are never shown.
    let out = run_to("role", "role");
    let all = output_text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(remote_manifest(&s3, "role"), local_manifest(&env));
    let state: serde_json::Value =
        serde_json::from_slice(&s3.request("GET", "/moto-api/data.json", "")).unwrap();
    let assumed = state["sts"]["AssumedRole"].as_array().unwrap();
    assert_eq!(assumed.len(), 1, "{assumed:?}");
    assert_eq!(
        assumed[0]["role_arn"],
        "arn:aws:iam::123456789012:role/cvmfs-push"
    );
    assert_eq!(assumed[0]["session_name"], "cvmfs-test");
    assert_eq!(assumed[0]["external_id"], "ext-1");
    let secret = assumed[0]["secret_access_key"].as_str().unwrap();
    assert!(
        !all.contains(secret) && !all.contains("profile-secret"),
        "{all}"
    );

    let out = run_to("orphan", "orphan");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("AWS profile 'orphan' in") && err.contains("role_arn without source_profile"),
        "{err}"
    );
}

/// `push` of `env`'s repository to `s3` under `prefix` with the credentials of the AWS
/// profile `profile` of `files` (credentials, config) and none from the environment; STS is
/// moto's, and `extra` adds variables.
fn push_as_profile(
    env: &Env,
    s3: &S3Server,
    files: (&Path, &Path),
    profile: &str,
    prefix: &str,
    extra: &[(&str, &str)],
) -> Output {
    profile_push(env, s3, files, profile, prefix, extra, true)
        .output()
        .unwrap()
}

/// The command [`push_as_profile`] runs (with `--json` if `json`).
fn profile_push(
    env: &Env,
    s3: &S3Server,
    files: (&Path, &Path),
    profile: &str,
    prefix: &str,
    extra: &[(&str, &str)],
    json: bool,
) -> Command {
    let target = format!("s3://{BUCKET}/{prefix}");
    let mut cmd = env.cmd(&[
        if json { "--json" } else { "--no-wait" },
        "push",
        FQRN,
        &target,
        "--allow-http",
        "--public-read",
        "--endpoint",
        &s3.endpoint(),
    ]);
    as_profile(&mut cmd, files, profile, &s3.endpoint());
    cmd.envs(extra.iter().copied());
    cmd
}

/// `cmd` with no AWS settings from the test's environment but the profile `profile` of
/// `files` (credentials, config) and STS at `sts`.
fn as_profile(cmd: &mut Command, files: (&Path, &Path), profile: &str, sts: &str) {
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_ENDPOINT_URL_SSO",
        "AWS_ENDPOINT_URL_SSO_OIDC",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_PROFILE", profile)
        .env("AWS_SHARED_CREDENTIALS_FILE", files.0)
        .env("AWS_CONFIG_FILE", files.1)
        .env("AWS_ENDPOINT_URL_STS", sts);
}

/// A loopback stand-in for an EC2 instance's metadata service (IMDSv2: a token first), an
/// EKS Pod Identity endpoint (`/pod`, with the pod's token) and the IAM Identity Center
/// portal (role `Pusher` of account 111122223333, for the access token `sso-token`), each
/// handing out credentials whose secret names it; returns its URL and the requests it
/// answered (`METHOD PATH STATUS`).
fn credential_endpoints() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let lower = head.to_ascii_lowercase();
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0usize);
            let mut body = vec![0u8; length];
            if conn.read_exact(&mut body).is_err() {
                continue;
            }
            let body = String::from_utf8_lossy(&body).to_string();
            let line = head.lines().next().unwrap_or("").to_string();
            let path = line.split(' ').nth(1).unwrap_or("");
            let credentials = |who: &str| {
                format!(
                    r#"{{"Code": "Success", "AccessKeyId": "{who}-key-id", "SecretAccessKey": "{who}-secret", "Token": "{who}-token", "Expiration": "2099-01-01T00:00:00Z"}}"#
                )
            };
            let role_path = "/latest/meta-data/iam/security-credentials/";
            let has_token = lower.contains("x-aws-ec2-metadata-token: imds-token");
            let (status, body) = match (line.split(' ').next().unwrap_or(""), path) {
                ("PUT", "/latest/api/token") => (200, "imds-token".to_string()),
                ("GET", p) if p == role_path && has_token => (200, "instance-role".to_string()),
                ("GET", p) if p == format!("{role_path}instance-role") && has_token => {
                    (200, credentials("imds"))
                }
                ("GET", "/pod") if lower.contains("authorization: pod-token") => {
                    (200, credentials("pod"))
                }
                ("GET", p)
                    if p == "/federation/credentials?account_id=111122223333&role_name=Pusher"
                        && lower.contains("x-amz-sso_bearer_token: sso-token") =>
                {
                    let c = r#"{"roleCredentials": {"accessKeyId": "sso-key-id", "secretAccessKey": "sso-secret", "sessionToken": "sso-session-token", "expiration": 4102444800000}}"#;
                    (200, c.to_string())
                }
                // IAM Identity Center OIDC's CreateToken, renewing a sign-in.
                ("POST", "/token")
                    if body.contains(r#""grantType":"refresh_token""#)
                        && body.contains(r#""refreshToken":"refresh-1""#)
                        && body.contains(r#""clientId":"client-1""#)
                        && body.contains(r#""clientSecret":"client-secret""#) =>
                {
                    let renewed = r#"{"accessToken": "sso-token", "expiresIn": 3600, "refreshToken": "refresh-2", "tokenType": "Bearer"}"#;
                    (200, renewed.to_string())
                }
                ("POST", "/token") => (400, r#"{"error": "invalid_grant"}"#.to_string()),
                _ => (401, String::new()),
            };
            log.lock()
                .unwrap()
                .push(format!("{} {status}", &line[..line.len().min(80)]));
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

/// The roles moto's STS was asked for, in order, with the key id of the credentials it gave.
fn assumed_roles(s3: &S3Server) -> Vec<(String, String)> {
    let state: serde_json::Value =
        serde_json::from_slice(&s3.request("GET", "/moto-api/data.json", "")).unwrap();
    let field = |r: &serde_json::Value, key: &str| r[key].as_str().unwrap_or("").to_string();
    state["sts"]["AssumedRole"]
        .as_array()
        .map(|roles| {
            roles
                .iter()
                .map(|r| (field(r, "role_arn"), field(r, "access_key_id")))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_role_is_assumed_with_another_roles_or_the_instances_or_the_pods_credentials() {
    let (s3, env, credentials, config) = with_ci_profile();
    std::fs::write(
        &config,
        "[default]\nregion = us-east-1\n\
         [profile inner]\nregion = us-east-1\n\
         role_arn = arn:aws:iam::123456789012:role/inner\nsource_profile = ci\n\
         [profile outer]\nregion = us-east-1\n\
         role_arn = arn:aws:iam::210987654321:role/outer\nsource_profile = inner\n\
         [profile ec2]\nregion = us-east-1\n\
         role_arn = arn:aws:iam::123456789012:role/from-instance\n\
         credential_source = Ec2InstanceMetadata\n\
         [profile pod]\nregion = us-east-1\n\
         role_arn = arn:aws:iam::123456789012:role/from-pod\ncredential_source = EcsContainer\n\
         [profile env]\nregion = us-east-1\n\
         role_arn = arn:aws:iam::123456789012:role/from-env\ncredential_source = Environment\n\
         [profile loop]\nregion = us-east-1\n\
         role_arn = arn:aws:iam::123456789012:role/loop\nsource_profile = loop2\n\
         [profile loop2]\nrole_arn = arn:aws:iam::123456789012:role/loop2\nsource_profile = loop\n",
    )
    .unwrap();
    let (endpoints, seen) = credential_endpoints();
    let pod_token = env.path("pod-token");
    std::fs::write(&pod_token, "pod-token").unwrap();
    let pod_url = format!("{endpoints}/pod");
    let files = (credentials.as_path(), config.as_path());
    // STS behind a relay that keeps the requests, to see which keys signed each AssumeRole.
    let sts_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sts_port = relay(s3.port, Relayed::Logged(sts_log.clone()));
    let sts = format!("http://127.0.0.1:{sts_port}");
    let push_as = |profile: &str, prefix: &str, extra: &[(&str, &str)]| {
        let mut vars = vec![("AWS_ENDPOINT_URL_STS", sts.as_str())];
        vars.extend_from_slice(extra);
        push_as_profile(&env, &s3, files, profile, prefix, &vars)
    };
    let signers = || {
        let signed = signed_by(&sts_log, 0);
        signed.into_iter().map(|(key, _)| key).collect::<Vec<_>>()
    };
    let secrets = [
        "profile-secret",
        "imds-secret",
        "imds-token",
        "pod-secret",
        "pod-token",
    ];
    let pushed = |out: &Output, prefix: &str| {
        let all = output_text(out);
        assert!(out.status.success(), "{all}");
        assert!(!secrets.iter().any(|s| all.contains(s)), "{all}");
        assert_eq!(remote_manifest(&s3, prefix), local_manifest(&env));
    };

    // A role behind a role: the inner one first, with the source profile's keys; the outer
    // one with the inner one's credentials.
    let out = push_as("outer", "outer", &[]);
    pushed(&out, "outer");
    let roles = assumed_roles(&s3);
    let arns: Vec<&str> = roles.iter().map(|(arn, _)| arn.as_str()).collect();
    assert_eq!(
        arns,
        [
            "arn:aws:iam::123456789012:role/inner",
            "arn:aws:iam::210987654321:role/outer"
        ]
    );
    assert_eq!(signers(), ["profile-key-id", roles[0].1.as_str()]);

    // credential_source = Ec2InstanceMetadata: the instance's credentials (IMDSv2) assume it.
    let imds = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoints.as_str())];
    let out = push_as("ec2", "ec2", &imds);
    pushed(&out, "ec2");
    let asked = seen.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|r| r.starts_with("PUT /latest/api/token") && r.ends_with(" 200"))
            && asked.iter().any(|r| {
                r.starts_with("GET /latest/meta-data/iam/security-credentials/instance-role")
                    && r.ends_with(" 200")
            }),
        "{asked:?}"
    );
    assert_eq!(
        assumed_roles(&s3).last().map(|r| r.0.as_str()),
        Some("arn:aws:iam::123456789012:role/from-instance")
    );
    assert_eq!(signers().last().map(String::as_str), Some("imds-key-id"));
    // A profile without credentials: the instance's own, at the same (the AWS SDKs') variable.
    let served = |s: &[String]| s.iter().filter(|r| r.contains("/instance-role ")).count();
    let before = served(&seen.lock().unwrap());
    let out = push_as("default", "instance", &imds);
    pushed(&out, "instance");
    assert_eq!(served(&seen.lock().unwrap()), before + 1);

    // credential_source = EcsContainer: the pod's credentials (EKS Pod Identity) assume it.
    let pod = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", pod_url.as_str()),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            pod_token.to_str().unwrap(),
        ),
        // Not asked: the container's endpoint serves.
        ("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9"),
    ];
    let out = push_as("pod", "pod", &pod);
    pushed(&out, "pod");
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|r| r.starts_with("GET /pod ") && r.ends_with(" 200")),
        "{:?}",
        seen.lock().unwrap()
    );
    assert_eq!(
        assumed_roles(&s3).last().map(|r| r.0.as_str()),
        Some("arn:aws:iam::123456789012:role/from-pod")
    );
    assert_eq!(signers().last().map(String::as_str), Some("pod-key-id"));
    let before = assumed_roles(&s3).len();

    // What cannot serve fails in one line naming the profile, before any request to STS.
    let no_keys = "credential_source = Environment, but AWS_ACCESS_KEY_ID and \
                   AWS_SECRET_ACCESS_KEY are not set";
    let no_pod = "credential_source = EcsContainer, but neither";
    let disabled = "AWS_EC2_METADATA_DISABLED is true";
    for (profile, vars, why) in [
        ("env", &[][..], no_keys),
        ("pod", &[][..], no_pod),
        (
            "ec2",
            &[("AWS_EC2_METADATA_DISABLED", "true")][..],
            disabled,
        ),
        (
            "loop",
            &[][..],
            "source_profile 'loop' leads back to itself (loop -> loop2 -> loop)",
        ),
    ] {
        let out = push_as(profile, profile, vars);
        let err = failed_in_one_line(&out);
        assert!(
            err.contains(why) && err.contains("AWS profile '"),
            "{profile}: {err}"
        );
    }
    assert_eq!(assumed_roles(&s3).len(), before);
    assert_eq!(signers().len(), before);
}

/// The key ids that signed the requests in `log` from byte `from` on, with the service each
/// request was signed for (`s3`, `sts`), in order.
fn signed_by(log: &std::sync::Mutex<Vec<u8>>, from: usize) -> Vec<(String, String)> {
    let log = log.lock().unwrap();
    let text = String::from_utf8_lossy(&log[from.min(log.len())..]).to_string();
    text.split("Credential=")
        .skip(1)
        .filter_map(|rest| {
            let scope: Vec<&str> = rest.split([',', ' ', '&']).next()?.split('/').collect();
            Some((scope.first()?.to_string(), scope.get(3)?.to_string()))
        })
        .collect()
}

/// `--profile NAME` names the profile as the AWS tools' option does: before `AWS_PROFILE` and
/// before the environment's keys, which then serve only a role's `credential_source =
/// Environment`. Kept with `--auto`, so the pushes after each publish take it too.
#[test]
fn an_explicit_profile_comes_before_the_keys_of_the_environment() {
    let (s3, env, credentials, config) = with_ci_profile();
    std::fs::write(
        &config,
        "[profile ci]\nregion = us-east-1\n\
         [profile env]\nregion = us-east-1\n\
         role_arn = arn:aws:iam::123456789012:role/from-env\ncredential_source = Environment\n",
    )
    .unwrap();
    let files = (credentials.as_path(), config.as_path());
    // S3 and STS behind one relay that keeps the requests: which keys signed each.
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let via = format!(
        "http://127.0.0.1:{}",
        relay(s3.port, Relayed::Logged(log.clone()))
    );
    let env_keys = [
        ("AWS_ACCESS_KEY_ID", "env-key-id"),
        ("AWS_SECRET_ACCESS_KEY", "env-secret"),
    ];
    let command = |aws_profile: &str, args: &[&str], keys: bool| {
        let mut cmd = env.cmd(&[&["--json"][..], args].concat());
        as_profile(&mut cmd, files, aws_profile, &via);
        cmd.env("AWS_ENDPOINT_URL", &via);
        if keys {
            cmd.envs(env_keys);
        }
        cmd
    };
    let run = |aws_profile: &str, args: &[&str], keys: bool| {
        let from = log.lock().unwrap().len();
        let out = command(aws_profile, args, keys).output().unwrap();
        (out, signed_by(&log, from))
    };
    // `push FQRN s3://BUCKET/PREFIX` with `more` arguments.
    let push_to = |aws_profile: &str, prefix: &str, more: &[&str], keys: bool| {
        let target = format!("s3://{BUCKET}/{prefix}");
        let args = ["push", FQRN, &target, "--allow-http", "--public-read"];
        run(aws_profile, &[&args[..], more].concat(), keys)
    };
    let pushed = |out: &Output, prefix: &str| {
        let all = output_text(out);
        assert!(out.status.success(), "{all}");
        assert!(
            !all.contains("env-secret") && !all.contains("profile-secret"),
            "{all}"
        );
        assert_eq!(remote_manifest(&s3, prefix), local_manifest(&env));
    };
    let keys_for = |signed: &[(String, String)], service: &str| {
        let mut keys: Vec<String> = signed
            .iter()
            .filter(|(_, s)| s == service)
            .map(|(k, _)| k.clone())
            .collect();
        keys.dedup();
        keys
    };

    // --profile with credential_source = Environment: the environment's keys assume the role,
    // whose credentials sign the push.
    let (out, signed) = push_to("ci", "env", &["--profile", "env"], true);
    pushed(&out, "env");
    let roles = assumed_roles(&s3);
    assert_eq!(
        roles.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["arn:aws:iam::123456789012:role/from-env"]
    );
    assert_eq!(keys_for(&signed, "sts"), ["env-key-id"]);
    assert_eq!(keys_for(&signed, "s3"), [roles[0].1.clone()]);

    // Under AWS_PROFILE alone, as for the AWS tools, the environment's keys sign the push.
    let (out, signed) = push_to("env", "plain", &[], true);
    pushed(&out, "plain");
    assert_eq!(keys_for(&signed, "s3"), ["env-key-id"]);
    assert!(keys_for(&signed, "sts").is_empty(), "{signed:?}");

    // --profile ci wins over AWS_PROFILE and the environment's keys.
    let (out, signed) = push_to("env", "ci", &["--profile", "ci"], true);
    pushed(&out, "ci");
    assert_eq!(keys_for(&signed, "s3"), ["profile-key-id"]);
    assert_eq!(assumed_roles(&s3).len(), 1);

    // What cannot serve fails in one line, before any request.
    for (profile, keys, why) in [
        (
            "env",
            false,
            "credential_source = Environment, but AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY are not set",
        ),
        (
            "nosuch",
            true,
            "AWS profile 'nosuch' (--profile) is in neither",
        ),
    ] {
        let (out, signed) = push_to("ci", "refused", &["--profile", profile], keys);
        let err = failed_in_one_line(&out);
        assert!(err.contains(why), "{profile}: {err}");
        assert!(signed.is_empty(), "{profile}: {signed:?}");
    }
    // An empty name is refused by the argument parser (an empty AWS_PROFILE means unset).
    let (out, signed) = push_to("ci", "refused", &["--profile", ""], true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--profile"), "{err}");
    assert!(signed.is_empty(), "{signed:?}");

    // Kept with --auto: the pushes after a publish, and `push FQRN`, take the profile.
    let (out, _) = push_to("env", "auto", &["--profile", "ci", "--auto"], true);
    pushed(&out, "auto");
    let src = env.path("src-auto");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("new"), "pushed after the publish\n").unwrap();
    let (out, signed) = run("env", &["publish", FQRN, src.to_str().unwrap()], true);
    pushed(&out, "auto");
    assert_eq!(keys_for(&signed, "s3"), ["profile-key-id"]);
    // --profile without a target: the push target's, with this profile for this run.
    let (out, signed) = run("ci", &["push", FQRN, "--profile", "env"], true);
    pushed(&out, "auto");
    assert_eq!(keys_for(&signed, "sts"), ["env-key-id"]);
    assert_eq!(assumed_roles(&s3).len(), 2);
}

#[test]
fn an_sso_profile_pushes_with_the_role_credentials_of_its_sign_in() {
    let (s3, env, credentials, config) = with_ci_profile();
    std::fs::write(
        &config,
        "[default]\nregion = us-east-1\n\
         [profile dev]\nregion = us-east-1\nsso_session = corp\n\
         sso_account_id = 111122223333\nsso_role_name = Pusher\n\
         [sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\n\
         sso_region = us-east-1\n\
         [profile via]\nregion = us-east-1\n\
         role_arn = arn:aws:iam::123456789012:role/from-sso\nsource_profile = dev\n",
    )
    .unwrap();
    // What `aws sso login --profile dev` leaves: the token under the SHA-1 of "corp".
    let home = env.path("sso-home");
    let cache = home.join(".aws/sso/cache");
    std::fs::create_dir_all(&cache).unwrap();
    let token = cache.join("ee0bfd2552fbd840c02cc48b6e823320543c450f.json");
    let sign_in = |expires: &str| {
        let text = format!(
            r#"{{"startUrl": "https://corp.awsapps.com/start", "region": "us-east-1", "accessToken": "sso-token", "expiresAt": "{expires}"}}"#
        );
        std::fs::write(&token, text).unwrap();
    };
    sign_in("2099-01-01T00:00:00Z");
    let (endpoints, seen) = credential_endpoints();
    let sts_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sts = format!(
        "http://127.0.0.1:{}",
        relay(s3.port, Relayed::Logged(sts_log.clone()))
    );
    let files = (credentials.as_path(), config.as_path());
    let push_as = |profile: &str, prefix: &str| {
        let vars = [
            ("HOME", home.to_str().unwrap()),
            ("AWS_ENDPOINT_URL_SSO", endpoints.as_str()),
            ("AWS_ENDPOINT_URL_SSO_OIDC", endpoints.as_str()),
            ("AWS_ENDPOINT_URL_STS", sts.as_str()),
        ];
        push_as_profile(&env, &s3, files, profile, prefix, &vars)
    };
    let secrets = [
        "sso-token",
        "sso-secret",
        "sso-session-token",
        "profile-secret",
    ];

    let out = push_as("dev", "dev");
    let all = output_text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!secrets.iter().any(|s| all.contains(s)), "{all}");
    assert_eq!(remote_manifest(&s3, "dev"), local_manifest(&env));
    let asked = seen.lock().unwrap().clone();
    assert_eq!(
        asked,
        ["GET /federation/credentials?account_id=111122223333&role_name=Pusher HTTP/1.1 200"]
    );

    // A role assumed with them: STS's request is signed with the SSO role's key.
    let out = push_as("via", "via");
    let all = output_text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(remote_manifest(&s3, "via"), local_manifest(&env));
    let log = String::from_utf8_lossy(&sts_log.lock().unwrap()).to_string();
    assert!(log.contains("Credential=sso-key-id/"), "{log}");

    // An expired sign-in of an sso_session is renewed with its refresh token, as by the AWS
    // CLI, and written back (0600, its other fields kept) for the next run.
    let renewable = |access: &str, refresh: &str, registration: &str| {
        let text = format!(
            r#"{{"startUrl": "https://corp.awsapps.com/start", "region": "us-east-1", "accessToken": "{access}", "expiresAt": "2020-01-01T00:00:00Z", "refreshToken": "{refresh}", "clientId": "client-1", "clientSecret": "client-secret", "registrationExpiresAt": "{registration}"}}"#
        );
        std::fs::write(&token, text).unwrap();
    };
    renewable("stale-token", "refresh-1", "2099-01-01T00:00:00Z");
    let secrets = [&secrets[..], &["client-secret", "refresh-1", "refresh-2"]].concat();
    let asked_now = || seen.lock().unwrap().len();
    let before = asked_now();
    let out = push_as("dev", "renewed");
    let all = output_text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!secrets.iter().any(|s| all.contains(s)), "{all}");
    assert_eq!(remote_manifest(&s3, "renewed"), local_manifest(&env));
    let asked = seen.lock().unwrap()[before..].to_vec();
    assert_eq!(
        asked,
        [
            "POST /token HTTP/1.1 200",
            "GET /federation/credentials?account_id=111122223333&role_name=Pusher HTTP/1.1 200"
        ]
    );
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&token).unwrap()).unwrap();
    assert_eq!(kept["accessToken"], "sso-token");
    assert_eq!(kept["refreshToken"], "refresh-2");
    assert_eq!(kept["clientSecret"], "client-secret");
    assert_eq!(kept["startUrl"], "https://corp.awsapps.com/start");
    let expires = kept["expiresAt"].as_str().unwrap().to_string();
    assert!(
        expires.ends_with('Z') && expires.as_str() > "2026-",
        "{expires}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // Valid for an hour now: the next push asks only the portal.
    let before = asked_now();
    let out = push_as("dev", "renewed");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(!seen.lock().unwrap()[before..]
        .iter()
        .any(|r| r.contains("/token")));
    // A refresh token the service refuses, or a registration that expired: sign in again.
    renewable("stale-token", "revoked", "2099-01-01T00:00:00Z");
    let err = failed_in_one_line(&push_as("dev", "late"));
    assert!(
        err.contains("refused to renew it (HTTP 400 Bad Request)")
            && err.contains("aws sso login --profile dev"),
        "{err}"
    );
    assert!(
        !secrets.iter().any(|s| err.contains(s)) && !err.contains("revoked"),
        "{err}"
    );
    renewable("stale-token", "refresh-1", "2020-01-01T00:00:00Z");
    let before = asked_now();
    let err = failed_in_one_line(&push_as("dev", "late"));
    assert!(
        err.contains("the sign-in expired at 2020-01-01T00:00:00Z"),
        "{err}"
    );
    assert_eq!(asked_now(), before);

    // A sign-in that expired, or that the portal refuses, says how to sign in again.
    sign_in("2020-01-01T00:00:00Z");
    let out = push_as("dev", "late");
    let err = failed_in_one_line(&out);
    assert!(
        err.contains("the sign-in expired at 2020-01-01T00:00:00Z")
            && err.contains("aws sso login --profile dev")
            && err.contains("AWS profile 'dev' in "),
        "{err}"
    );
    std::fs::write(
        &token,
        r#"{"accessToken": "revoked-token", "expiresAt": "2099-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let out = push_as("dev", "late");
    let err = failed_in_one_line(&out);
    assert!(
        err.contains("refused the sign-in (HTTP 401 Unauthorized)")
            && err.contains("aws sso login --profile dev"),
        "{err}"
    );
    assert!(!err.contains("revoked-token"), "{err}");
}

#[test]
fn a_role_with_mfa_serial_asks_for_its_code_at_the_terminal() {
    let (s3, env, credentials, config) = with_ci_profile();
    std::fs::write(
        &config,
        "[profile mfa]\nregion = us-east-1\n\
         role_arn = arn:aws:iam::123456789012:role/guarded\nsource_profile = ci\n\
         mfa_serial = arn:aws:iam::123456789012:mfa/operator\n",
    )
    .unwrap();
    let sts_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sts = format!(
        "http://127.0.0.1:{}",
        relay(s3.port, Relayed::Logged(sts_log.clone()))
    );
    let files = (credentials.as_path(), config.as_path());
    let home = env.path("home");
    let vars = [
        ("AWS_ENDPOINT_URL_STS", sts.as_str()),
        ("HOME", home.to_str().unwrap()),
    ];
    // Where the AWS CLI caches this role's credentials: botocore's key for its arguments.
    let cache_dir = home.join(".aws/cli/cache");
    let cached = cache_dir.join("a238ae6868a12e927a470bbb1363ecccd9902055.json");

    // At a terminal: asked for once, not echoed, sent with AssumeRole.
    // Without --json: the push draws its progress bar on the terminal.
    let cmd = profile_push(&env, &s3, files, "mfa", "mfa", &vars, false);
    let prompt = "Enter MFA code for arn:aws:iam::123456789012:mfa/operator: ";
    let run = common::on_terminal_typing(&cmd, prompt, "123456\n");
    let out = run.output;
    let shown = String::from_utf8_lossy(&out.stdout);
    // While the code is asked for, the progress bar is hidden: nothing is drawn after the
    // prompt (the bar's ticks would redraw its line over it).
    let before = String::from_utf8_lossy(&run.before_typing);
    assert!(before.ends_with(prompt), "{before:?}");
    assert!(out.status.success(), "{shown}");
    assert_eq!(shown.matches(prompt).count(), 1, "{shown}");
    assert!(
        !shown.contains("123456\r") && !shown.contains("123456\n"),
        "{shown}"
    );
    assert_eq!(remote_manifest(&s3, "mfa"), local_manifest(&env));
    let log = String::from_utf8_lossy(&sts_log.lock().unwrap()).to_string();
    assert!(
        log.contains(
            "SerialNumber=arn%3Aaws%3Aiam%3A%3A123456789012%3Amfa%2Foperator&TokenCode=123456"
        ),
        "{log}"
    );

    // The role's credentials went to the AWS CLI's cache, private, as botocore writes them.
    let text = std::fs::read_to_string(&cached).expect("the AWS CLI's cache file");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cached).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let entry: serde_json::Value = serde_json::from_str(&text).unwrap();
    for field in [
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    ] {
        assert!(entry["Credentials"][field].is_string(), "{field}");
    }

    // The next push, without a terminal, takes them from there: no code, no AssumeRole.
    let before = sts_log.lock().unwrap().len();
    let pushes_from_the_cache = |prefix: &str| {
        let out = push_as_profile(&env, &s3, files, "mfa", prefix, &vars);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sts_log.lock().unwrap().len(), before);
    };
    pushes_from_the_cache("mfa-cached");
    assert_eq!(remote_manifest(&s3, "mfa-cached"), local_manifest(&env));

    // So do credentials the AWS CLI cached after asking for the code itself (its own
    // format: the whole AssumeRole response, times from strftime's %Z).
    let cli_entry = serde_json::json!({
        "Credentials": {
            "AccessKeyId": "ASIACLICACHED",
            "SecretAccessKey": "cli-secret",
            "SessionToken": "cli-token",
            "Expiration": "2099-01-01T00:00:00UTC",
        },
        "AssumedRoleUser": {"AssumedRoleId": "AROA:botocore-session-1"},
    });
    std::fs::write(&cached, cli_entry.to_string()).unwrap();
    pushes_from_the_cache("mfa-cli");

    // Without a terminal (CI) and with cached credentials about to expire (botocore renews
    // them 15 minutes before): one line that says so, before any request to STS.
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
    let mut expiring = cli_entry.clone();
    expiring["Credentials"]["Expiration"] = serde_json::Value::from(soon);
    std::fs::write(&cached, expiring.to_string()).unwrap();
    let out = push_as_profile(&env, &s3, files, "mfa", "mfa-ci", &vars);
    let err = failed_in_one_line(&out);
    assert!(
        err.contains("its code is typed at a terminal, and there is none")
            && err.contains("AWS profile 'mfa' in "),
        "{err}"
    );
    assert_eq!(sts_log.lock().unwrap().len(), before);
    assert!(
        !err.contains("cli-secret") && !err.contains("cli-token"),
        "{err}"
    );
}

#[test]
fn a_role_is_assumed_with_a_web_identity_token_of_a_file() {
    let (s3, env, credentials, config) = with_ci_profile();
    let token_file = env.path("web-identity-token");
    std::fs::write(&token_file, "eyJ-first-token\n").unwrap();
    std::fs::write(
        &config,
        format!(
            "[profile eks]\nregion = us-east-1\n\
             role_arn = arn:aws:iam::123456789012:role/from-token\n\
             web_identity_token_file = {}\nrole_session_name = pod-1\n\
             [profile cross]\nregion = us-east-1\n\
             role_arn = arn:aws:iam::210987654321:role/cross\nsource_profile = eks\n\
             [profile twice]\nregion = us-east-1\nrole_arn = arn:aws:iam::1:role/x\n\
             web_identity_token_file = {0}\nsource_profile = ci\n",
            token_file.display()
        ),
    )
    .unwrap();
    let sts_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sts = format!(
        "http://127.0.0.1:{}",
        relay(s3.port, Relayed::Logged(sts_log.clone()))
    );
    let files = (credentials.as_path(), config.as_path());
    let vars = [("AWS_ENDPOINT_URL_STS", sts.as_str())];
    let sent = || String::from_utf8_lossy(&sts_log.lock().unwrap()).to_string();

    // AssumeRoleWithWebIdentity: the token is the proof, the request is not signed.
    let out = push_as_profile(&env, &s3, files, "eks", "eks", &vars);
    let all = output_text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("eyJ-first-token"), "{all}");
    assert_eq!(remote_manifest(&s3, "eks"), local_manifest(&env));
    let log = sent();
    assert!(
        log.contains("Action=AssumeRoleWithWebIdentity")
            && log.contains("RoleSessionName=pod-1")
            && log.contains("WebIdentityToken=eyJ-first-token"),
        "{log}"
    );
    assert!(!log.contains("Credential="), "{log}");
    let roles = assumed_roles(&s3);
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0].0, "arn:aws:iam::123456789012:role/from-token");

    // Behind another role: the token's role signs that one's AssumeRole. The file is read
    // again: a rotated token is the one sent.
    std::fs::write(&token_file, "eyJ-second-token\n").unwrap();
    let out = push_as_profile(&env, &s3, files, "cross", "cross", &vars);
    let all = output_text(&out);
    assert!(out.status.success(), "{all}");
    let roles = assumed_roles(&s3);
    let log = sent();
    assert!(log.contains("WebIdentityToken=eyJ-second-token"), "{log}");
    assert!(
        log.contains(&format!("Credential={}/", roles[1].1)),
        "{log}"
    );
    assert_eq!(roles[2].0, "arn:aws:iam::210987654321:role/cross");

    // A role takes one way to be assumed; a missing token file fails in one line.
    let out = push_as_profile(&env, &s3, files, "twice", "twice", &vars);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("a role takes one"),
        "{err}"
    );
    std::fs::remove_file(&token_file).unwrap();
    let out = push_as_profile(&env, &s3, files, "eks", "gone", &vars);
    let err = failed_in_one_line(&out);
    assert!(
        err.contains(&format!("web_identity_token_file {}", token_file.display()))
            && err.contains("AWS profile 'eks' in "),
        "{err}"
    );
}

/// Two homes publish into one storage and push it to one bucket. A push overtaken on its way by
/// the other home's publish and push of a later revision finds the bucket serving what the
/// storage now holds: it succeeds and says so, instead of failing its compare-and-swap (which
/// a CI job would then retry for nothing), and brings up the root files that go with that
/// manifest, which the other push, stopped after its manifest, left behind.
#[test]
fn a_push_overtaken_by_another_homes_later_revision_succeeds() {
    let s3 = S3Server::start();
    let env = Env::init(&[]);
    let src = publish_one_file(&env);
    push(&env, &s3, "shared", &[]);
    let other = env.other_home();

    std::fs::write(src.join("b.txt"), "b\n").unwrap();
    publish(&env, &src);
    let mut first = push_cmd(&env, &s3, "shared", &[]);
    first.stdout(Stdio::piped());
    let paused = common::Paused::at(first, "push-before-manifest");

    std::fs::write(src.join("c.txt"), "c\n").unwrap();
    publish(&other, &src);
    let mut crashing = push_cmd(&other, &s3, "shared", &[]);
    crashing.env("CVMFS_OCI_CRASH_AT", "push-after-manifest");
    assert!(!crashing.output().unwrap().status.success());
    assert_eq!(remote_manifest(&s3, "shared"), local_manifest(&env));
    assert_ne!(
        remote_file(&s3, "shared", ".cvmfsreflog"),
        local_file(&env, ".cvmfsreflog")
    );
    let out = paused.resume();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["superseded"], true, "{report}");
    assert_eq!(report["revision"], 4, "{report}");
    assert_eq!(remote_manifest(&s3, "shared"), local_manifest(&env));
    assert_eq!(
        remote_file(&s3, "shared", ".cvmfsreflog"),
        local_file(&env, ".cvmfsreflog")
    );
    check_bucket(&env, &s3, "shared");
    assert_served_matches_source(&env, &s3.url("shared"), &src, "");

    // `push --delete` holds the storage as gc does: no home publishes while it decides what
    // the bucket may lose.
    let deleting = common::Paused::at(
        push_cmd(&env, &s3, "shared", &["--delete"]),
        "push-before-manifest",
    );
    std::fs::write(src.join("d.txt"), "d\n").unwrap();
    let refused = other.fails(&["--no-wait", "publish", FQRN, src.to_str().unwrap()]);
    assert!(refused.contains("or a push --delete"), "{refused}");
    assert!(deleting.resume().status.success());
    publish(&other, &src);
}

/// An `https://` endpoint is trusted only through a CA the user names (`SSL_CERT_FILE`, as
/// curl and OpenSSL read it) or the system's, for the name or address it is reached by and
/// within its dates, or through its own self-signed certificate in that file; a refusal says
/// why in one line and leaves the bucket as it was.
#[test]
fn an_https_endpoint_is_used_only_when_its_certificate_verifies() {
    let s3 = S3Server::start();
    let env = Env::init(&[]);
    publish_one_file(&env);
    let ca = fixtures::tls::TestCa::new().unwrap();
    let (good_cert, good_key) = ca.server_certificate("good", "IP:127.0.0.1").unwrap();
    let (other_cert, other_key) = ca.server_certificate("other", "DNS:other.example").unwrap();
    let (old_cert, old_key) = ca.expired_certificate("old", "IP:127.0.0.1").unwrap();
    let (own_cert, own_key) = ca.self_signed_certificate("own", "IP:127.0.0.1").unwrap();
    let good = fixtures::tls::TlsFront::start(&good_cert, &good_key, s3.port).unwrap();
    let other = fixtures::tls::TlsFront::start(&other_cert, &other_key, s3.port).unwrap();
    let expired = fixtures::tls::TlsFront::start(&old_cert, &old_key, s3.port).unwrap();
    let self_signed = fixtures::tls::TlsFront::start(&own_cert, &own_key, s3.port).unwrap();
    // `trust`: the variable (SSL_CERT_FILE or SSL_CERT_DIR) that names what is trusted.
    let push_trusting =
        |front: &fixtures::tls::TlsFront, trust: Option<(&str, &Path)>, prefix: &str| {
            let target = format!("s3://{BUCKET}/{prefix}");
            let mut cmd = with_s3(
                env.cmd(&["--json", "push", FQRN, &target, "--public-read"]),
                &s3,
            );
            cmd.env(
                "AWS_ENDPOINT_URL",
                format!("https://127.0.0.1:{}", front.port()),
            );
            cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
            if let Some((var, path)) = trust {
                cmd.env(var, path);
            }
            cmd.output().unwrap()
        };
    let push_to_prefix = |front: &fixtures::tls::TlsFront, ca_file: Option<&Path>, prefix: &str| {
        push_trusting(front, ca_file.map(|f| ("SSL_CERT_FILE", f)), prefix)
    };
    let push_to = |front: &fixtures::tls::TlsFront, ca_file: Option<&Path>| {
        push_to_prefix(front, ca_file, "tls")
    };
    let refused = |out: Output, why: &str| {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("TLS refused the endpoint"), "{err}");
        // A refusal is final: not tried again.
        assert!(!err.contains("retries"), "{err}");
        assert!(err.contains(why), "{err}");
        assert!(!err.contains("test-secret"), "{err}");
    };
    refused(push_to(&good, None), "SSL_CERT_FILE");
    refused(push_to(&other, Some(&ca.ca_path())), "not valid for name");
    refused(
        push_to(&expired, Some(&ca.ca_path())),
        "out of its validity period",
    );
    let out = push_to(&good, Some(&ca.ca_path()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // Nothing went up before: the refused pushes left no manifest and no object.
    assert!(report["remote_revision"].is_null(), "{report}");
    assert_eq!(report["objects_present"], 0, "{report}");
    assert_eq!(remote_manifest(&s3, "tls"), local_manifest(&env));
    // A self-signed certificate marked CA:TRUE (MinIO's `certgen -ca`, `openssl req -x509`)
    // is the endpoint's own once trusted, as for the AWS and MinIO clients; not before.
    refused(push_to_prefix(&self_signed, None, "own"), "CA:TRUE");
    refused(
        push_to_prefix(&self_signed, Some(&ca.ca_path()), "own"),
        "trust that certificate itself through SSL_CERT_FILE",
    );
    let out = push_to_prefix(&self_signed, Some(&own_cert), "own");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(remote_manifest(&s3, "own"), local_manifest(&env));
    // The same through SSL_CERT_DIR, a list of directories of PEM files (one that is not
    // there passed over, as by OpenSSL); the CA's certificate alone is not trusted for it.
    let trusting_dirs = |dirs: &[&str]| {
        let paths: Vec<_> = dirs.iter().map(|d| env.path(d)).collect();
        for (src, dir) in [(&own_cert, "own-certs"), (&ca.ca_path(), "ca-certs")] {
            if paths.contains(&env.path(dir)) && !env.path(dir).exists() {
                std::fs::create_dir(env.path(dir)).unwrap();
                std::fs::copy(src, env.path(dir).join("cert.pem")).unwrap();
            }
        }
        let list = std::env::join_paths(&paths).unwrap();
        push_trusting(
            &self_signed,
            Some(("SSL_CERT_DIR", Path::new(&list))),
            "own-dir",
        )
    };
    refused(
        trusting_dirs(&["ca-certs"]),
        "trust that certificate itself through SSL_CERT_FILE",
    );
    let out = trusting_dirs(&["no-such-dir", "ca-certs", "own-certs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(remote_manifest(&s3, "own-dir"), local_manifest(&env));
}

/// How [`relay`] changes the S3 endpoint behind it.
#[derive(Clone)]
enum Relayed {
    /// Renames the `if-match` and `if-none-match` headers of requests (to names of the same
    /// length; moto does not check signatures), as an S3-compatible server that ignores
    /// conditional writes behaves.
    WithoutConditions,
    /// Answers every DELETE with 403 AccessDenied, as under a policy that allows PutObject
    /// but denies DeleteObject.
    DeletesDenied,
    /// Passes everything on and keeps what clients sent.
    Logged(std::sync::Arc<std::sync::Mutex<Vec<u8>>>),
}

/// A relay in front of `backend`, changed as `how` says. Stops with the test. A DELETE has no
/// body and comes alone (a client sends its next request only after the last answer).
fn relay(backend: u16, how: Relayed) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", backend)) else {
                continue;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let mut answer = client.try_clone().unwrap();
            let how = how.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = c_read.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut data = buf[..n].to_vec();
                    if let Relayed::Logged(log) = &how {
                        log.lock().unwrap().extend_from_slice(&data);
                    }
                    if matches!(how, Relayed::DeletesDenied) && is_delete(&data) {
                        let reply = denied_delete(&mut data, &mut c_read);
                        if answer.write_all(&reply).is_err() {
                            break;
                        }
                        continue;
                    }
                    if matches!(how, Relayed::WithoutConditions) {
                        for (from, to) in [
                            (&b"if-none-match:"[..], &b"x-ignored-hdr:"[..]),
                            (b"if-match:", b"x-ignore:"),
                        ] {
                            while let Some(at) = data
                                .windows(from.len())
                                .position(|w| w.eq_ignore_ascii_case(from))
                            {
                                data[at..at + to.len()].copy_from_slice(to);
                            }
                        }
                    }
                    if s_write.write_all(&data).is_err() {
                        break;
                    }
                }
                let _ = s_write.shutdown(std::net::Shutdown::Write);
            });
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// Whether a request starts with a DELETE, or a multi-object delete (`POST /BUCKET?delete`).
fn is_delete(request: &[u8]) -> bool {
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    line.starts_with(b"DELETE ")
        || (line.starts_with(b"POST ") && line.windows(7).any(|w| w == b"?delete"))
}

/// Reads the rest of a delete request that starts with `request` and returns S3's answer
/// under a policy that denies DeleteObject: 403 to a DELETE; to a multi-object delete 200
/// with an AccessDenied error for each key.
fn denied_delete(request: &mut Vec<u8>, from: &mut TcpStream) -> Vec<u8> {
    let header_end = loop {
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut more = [0u8; 4096];
        match from.read(&mut more) {
            Ok(0) | Err(_) => return Vec::new(),
            Ok(n) => request.extend_from_slice(&more[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..header_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < header_end + length {
        let mut more = [0u8; 4096];
        match from.read(&mut more) {
            Ok(0) | Err(_) => return Vec::new(),
            Ok(n) => request.extend_from_slice(&more[..n]),
        }
    }
    let body = String::from_utf8_lossy(&request[header_end..]).to_string();
    let (status, reply) = if request.starts_with(b"DELETE ") {
        let denied = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        ("403 Forbidden", denied.to_string())
    } else {
        let errors: String = body
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(|k| {
                format!(
                    "<Error><Key>{k}</Key><Code>AccessDenied</Code>\
                     <Message>Access Denied</Message></Error>"
                )
            })
            .collect();
        ("200 OK", format!("<DeleteResult>{errors}</DeleteResult>"))
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{reply}",
        reply.len()
    )
    .into_bytes()
}

/// What a command that failed wrote to stderr: one line, asserted.
fn failed_in_one_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

/// A command's standard output and error, one after the other.
fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `push --json` to `PREFIX` in the test bucket through the endpoint on `port` (a [`relay`]),
/// over plain HTTP, with `extra` arguments.
fn push_through(env: &Env, s3: &S3Server, port: u16, prefix: &str, extra: &[&str]) -> Output {
    let target = format!("s3://{BUCKET}/{prefix}");
    let args = [
        &[
            "--json",
            "push",
            FQRN,
            &target,
            "--allow-http",
            "--public-read",
        ][..],
        extra,
    ]
    .concat();
    with_s3(env.cmd(&args), s3)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap()
}

/// Where the bucket's policy denies DeleteObject, the probe of conditional writes stays: the
/// push succeeds and says which key stayed and why, with `--json` in its report.
#[test]
fn a_probe_key_that_cannot_be_deleted_is_reported() {
    let s3 = S3Server::start();
    let env = Env::init(&[]);
    publish_one_file(&env);
    let port = relay(s3.port, Relayed::DeletesDenied);
    let out = push_through(&env, &s3, port, "kept", &[]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(remote_manifest(&s3, "kept"), local_manifest(&env));
    let warning = stderr
        .lines()
        .find(|l| l.contains("probe of conditional writes stays"))
        .unwrap_or_else(|| panic!("no warning: {stderr} {stdout}"));
    let key = warning
        .split_whitespace()
        .find_map(|w| w.split_once("kept/.cvmfs-oci-probe-"))
        .map(|(_, rest)| rest.trim_end_matches(':'))
        .unwrap_or_else(|| panic!("no key named: {warning}"));
    assert!(warning.contains("AccessDenied"), "{warning}");
    assert!(!warning.contains("test-secret"), "{warning}");
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(
        report["probe_left"].as_str().unwrap().contains(key),
        "{report}"
    );
    // It is there, as said.
    let probe = remote_file(&s3, "kept", &format!(".cvmfs-oci-probe-{key}"));
    assert_eq!(probe, b"conditional write probe\n");
}

/// An endpoint that ignores conditional writes cannot keep two pushes from overwriting each
/// other's manifest: refused before any root file goes up, unless the operator says only
/// one push at a time goes there (`--single-pusher`, kept with `--auto`).
#[test]
fn an_endpoint_that_ignores_conditional_writes_needs_single_pusher() {
    let s3 = S3Server::start();
    let env = Env::init(&[]);
    let src = publish_one_file(&env);
    let relay = relay(s3.port, Relayed::WithoutConditions);
    let push = |extra: &[&str]| push_through(&env, &s3, relay, "single", extra);
    let out = push(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("ignores conditional writes, If-None-Match")
            && err.contains("--single-pusher"),
        "{err}"
    );
    // No root file went up; objects may have (they are content-addressed, never harmful).
    let out = push(&["--single-pusher", "--auto"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("manifest_written").is_some())
        .unwrap_or_else(|| panic!("no push report: {stdout}"));
    assert!(report["remote_revision"].is_null(), "{report}");
    assert_eq!(report["manifest_written"], true, "{report}");
    assert_eq!(remote_manifest(&s3, "single"), local_manifest(&env));
    // The next publish pushes through the same endpoint by itself: the target kept the choice.
    std::fs::write(src.join("b"), b"still one writer\n").unwrap();
    let out = with_s3(env.cmd(&["publish", FQRN, src.to_str().unwrap()]), &s3)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{relay}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(remote_manifest(&s3, "single"), local_manifest(&env));
}
