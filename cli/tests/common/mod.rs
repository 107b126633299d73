//! Helpers for the end-to-end tests: a repository in a temporary directory driven through the
//! real `cvmfs-oci` binary.
#![allow(dead_code)]

use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const FQRN: &str = "test.cvmfs-oci.local";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub storage: PathBuf,
}

impl Env {
    /// A fresh repository `FQRN`, created with `cvmfs-oci init` and extra init flags.
    pub fn init(extra: &[&str]) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("cvmfs-oci-e2e")
            .tempdir()
            .expect("tempdir");
        let home = dir.path().join("home");
        let storage = dir.path().join("storage");
        let env = Env { dir, home, storage };
        let mut args = vec!["init", FQRN, "--storage"];
        let storage = env.storage.to_str().expect("utf-8 temp path").to_string();
        args.push(&storage);
        args.extend_from_slice(extra);
        env.ok(&args);
        env
    }

    /// `cvmfs-oci init` with extra flags that must fail; returns its one error line.
    pub fn init_fails(extra: &[&str]) -> String {
        let dir = tempfile::Builder::new()
            .prefix("cvmfs-oci-e2e")
            .tempdir()
            .expect("tempdir");
        let env = Env {
            home: dir.path().join("home"),
            storage: dir.path().join("storage"),
            dir,
        };
        let storage = env.storage.to_str().expect("utf-8 temp path").to_string();
        let mut args = vec!["init", FQRN, "--storage", &storage];
        args.extend_from_slice(extra);
        env.fails(&args)
    }

    /// A second home for this repository's storage and keys (another machine, another CI
    /// runner), made with `init --existing`.
    pub fn other_home(&self) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = Env {
            home: dir.path().join("home"),
            storage: self.storage.clone(),
            dir,
        };
        let keys = self.home.join(FQRN).join("keys");
        let storage = self.storage.to_str().expect("utf-8 temp path");
        let keys = keys.to_str().expect("utf-8 temp path");
        other.ok(&[
            "init",
            FQRN,
            "--storage",
            storage,
            "--existing",
            "--keys",
            keys,
        ]);
        other
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cvmfs-oci"));
        c.arg("--home").arg(&self.home).args(args);
        c.env_remove("CVMFS_OCI_CRASH_AT");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run cvmfs-oci")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cvmfs-oci {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts failure with a one-line error; returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "cvmfs-oci {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
        lines[0].to_string()
    }

    pub fn check(&self, full: bool) {
        let mut args = vec!["check", FQRN];
        if full {
            args.push("--full");
        }
        self.ok(&args);
    }

    /// Field `key` (`C`, `M`, `Y`, …) of the signed manifest in the storage.
    pub fn manifest_field(&self, key: char) -> String {
        let bytes = std::fs::read(self.storage.join(".cvmfspublished")).expect("manifest");
        let text = String::from_utf8_lossy(&bytes);
        let body = text.split("\n--\n").next().unwrap_or_default();
        body.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} line in the manifest"))
            .to_string()
    }

    pub fn revision(&self) -> u64 {
        let out = self.ok(&["--json", "info", FQRN]);
        let v: serde_json::Value =
            serde_json::from_str(out.lines().last().unwrap_or("{}")).expect("info --json");
        v["revision"].as_u64().expect("revision")
    }

    /// Every file of the storage directory with the SHA-1 of its bytes.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        snapshot(&self.storage)
    }
}

pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in walkdir(dir) {
        if e.is_file() {
            let bytes = std::fs::read(&e).expect("read storage file");
            out.insert(e, hex::encode(Sha1::digest(&bytes)));
        }
    }
    out
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Reads the repository through the independent `cvmfs` crate over loopback HTTP and compares
/// it with the listing of `source` (as if published at `/`, or at `prefix`).
pub fn assert_matches_source(env: &Env, source: &Path, prefix: &str) {
    let server = fixtures::witness::serve_repository(&env.storage).expect("serve storage");
    assert_served_matches_source(env, &server.url(), source, prefix);
}

/// [`assert_matches_source`] for the repository served at `url` (e.g. an S3 bucket).
pub fn assert_served_matches_source(env: &Env, url: &str, source: &Path, prefix: &str) {
    let cache = env.path("witness-cache");
    // A fresh cache each time: the witness must fetch what the server serves now.
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&cache).expect("cache dir");
    let report = fixtures::witness::witness_read(url, &cache).expect("witness read");
    let fs = fixtures::tree_listing(source).expect("listing");
    let fs: BTreeMap<Vec<u8>, fixtures::FsEntry> = fs
        .into_iter()
        .map(|(k, v)| {
            let mut p = prefix.as_bytes().to_vec();
            if k != b"/" {
                p.extend_from_slice(&k);
            } else if p.is_empty() {
                p.push(b'/');
            }
            (p, v)
        })
        .collect();
    let witness: BTreeMap<String, _> = if prefix.is_empty() {
        report.entries
    } else {
        report
            .entries
            .into_iter()
            .filter(|(k, _)| k == prefix || k.starts_with(&format!("{prefix}/")))
            .collect()
    };
    let diffs = fixtures::witness::compare(&fs, &witness);
    assert!(
        diffs.is_empty(),
        "repository differs from {}:\n{}",
        source.display(),
        diffs.join("\n")
    );
}

/// `len` bytes that zlib cannot shrink much (xorshift), the same for the same seed.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// Independent of our signer: body hash, `Y` against the reflog's bytes, and the signature
/// with `openssl dgst -sha1 -verify` and the certificate's public key.
pub fn assert_manifest_verifies(env: &Env) {
    let file = std::fs::read(env.storage.join(".cvmfspublished")).unwrap();
    let sep = file.windows(3).position(|w| w == b"--\n").unwrap();
    let body = &file[..sep];
    let rest = &file[sep + 3..];
    let nl = rest.iter().position(|&b| b == b'\n').unwrap();
    let hash_text = &rest[..nl];
    assert_eq!(hash_text, hex::encode(Sha1::digest(body)).as_bytes());
    let reflog = std::fs::read(env.storage.join(".cvmfsreflog")).unwrap();
    let y = format!("Y{}", hex::encode(Sha1::digest(&reflog)));
    let body_text = String::from_utf8_lossy(body);
    assert!(body_text.lines().any(|l| l == y), "{body_text}");
    let work = env.path("verify");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("m.hash"), hash_text).unwrap();
    std::fs::write(work.join("m.sig"), &rest[nl + 1..]).unwrap();
    let crt = env.home.join(FQRN).join("keys").join(format!("{FQRN}.crt"));
    let openssl = |args: &[&str]| {
        let mut cmd = std::process::Command::new("openssl");
        fixtures::tools::run(cmd.current_dir(&work).args(args)).expect("openssl")
    };
    let pubkey = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-pubkey"]);
    std::fs::write(work.join("repo.pub"), pubkey).unwrap();
    let out = openssl(&[
        "dgst",
        "-sha1",
        "-verify",
        "repo.pub",
        "-signature",
        "m.sig",
        "m.hash",
    ]);
    assert_eq!(out.trim_end(), "Verified OK");
}

/// A tar of `dir` written by GNU tar (an independent writer; pax, with xattrs), as `name` in
/// the test directory; `compress` is a tar flag such as `-z`, `--zstd` or `--no-auto-compress`.
pub fn gnu_tar(env: &Env, dir: &Path, name: &str, compress: &str) -> PathBuf {
    let out = env.path(name);
    let status = Command::new("tar")
        .args(["--xattrs", "--format=pax", compress, "-cf"])
        .arg(&out)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success());
    out
}

/// The edge-case image as an OCI layout (gzip, ref `v1`) and as a docker archive (plain,
/// `example.org/team/app:2.0`), converted into `env`'s repository by one `convert`. Returns
/// the layout's directory.
pub fn convert_edge_layout_and_archive(env: &Env) -> PathBuf {
    use fixtures::oci::{Compression, MediaTypes};
    let layout = env.path("layout");
    edge_image(Compression::Gzip, MediaTypes::Oci)
        .write_layout(&layout, "v1")
        .unwrap();
    let archive = env.path("image.tar");
    edge_image(Compression::None, MediaTypes::Docker)
        .write_docker_archive(&archive, "example.org/team/app:2.0")
        .unwrap();
    let oci = format!("oci:{}:v1", layout.display());
    let arch = format!("docker-archive:{}", archive.display());
    env.ok(&["convert", FQRN, &oci, &arch]);
    layout
}

/// An image of the edge-case layers (whiteouts, opaque directories, hardlinks, special files,
/// xattrs) with a config that has env, entrypoint, cmd and a label.
pub fn edge_image(
    c: fixtures::oci::Compression,
    m: fixtures::oci::MediaTypes,
) -> fixtures::oci::ImageBuilder {
    let mut b = fixtures::oci::ImageBuilder::new()
        .env("PATH=/usr/local/bin:/usr/bin:/bin")
        .env("GREETING=hello world")
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo hi"])
        .label("org.example.test", "edge")
        .media_types(m);
    for layer in fixtures::layers::edge_case_layers() {
        b = b.layer(layer, c);
    }
    b
}

/// Runs `cmd` with a terminal for stdin, stdout and stderr (util-linux `script` makes one)
/// and returns everything written there; asserts that it succeeded.
pub fn on_terminal(cmd: &Command) -> String {
    let out = on_terminal_typing(cmd, "", "").output;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{:?} on a terminal failed: {text}",
        cmd.get_program()
    );
    text
}

/// What [`on_terminal_typing`] saw.
pub struct TerminalRun {
    /// All `cmd` wrote to the terminal (as stdout) and its exit status.
    pub output: std::process::Output,
    /// What the terminal showed when `typed` was typed, half a second after the prompt.
    pub before_typing: Vec<u8>,
}

/// Runs `cmd` on a terminal (`script`) where `typed` is typed half a second after `cmd`
/// wrote `prompt` (at once if it is empty).
pub fn on_terminal_typing(cmd: &Command, prompt: &str, typed: &str) -> TerminalRun {
    use std::io::{Read, Write};
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect();
    let mut script = Command::new("script");
    script.args(["-q", "-e", "-c", &line.join(" "), "/dev/null"]);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    script
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = script.spawn().expect("script (util-linux) runs");
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let shown = shown.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                shown.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !prompt.is_empty()
        && !String::from_utf8_lossy(&shown.lock().unwrap()).contains(prompt)
        && std::time::Instant::now() < deadline
        && child.try_wait().expect("script").is_none()
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if !prompt.is_empty() {
        // Long enough for a progress bar's ticks (120 ms) to show if they go on.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let before_typing = shown.lock().unwrap().clone();
    let _ = stdin.write_all(typed.as_bytes());
    // Kept open until the command ends: `script` stops at the end of its input.
    let status = child.wait().expect("script ends");
    drop(stdin);
    reader.join().expect("reader");
    let stdout = shown.lock().unwrap().clone();
    let output = std::process::Output {
        status,
        stdout,
        stderr: Vec::new(),
    };
    TerminalRun {
        output,
        before_typing,
    }
}

/// A process holding an exclusive `flock` on `file` until killed.
pub fn lock_holder(file: &std::path::Path) -> std::process::Child {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"exec 9>>"$0" && flock 9 && echo locked && exec sleep 600"#)
        .arg(file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "locked\n");
    child
}

/// A command stopped at a fault point (`CVMFS_OCI_PAUSE_AT`) until [`Paused::resume`].
pub struct Paused {
    child: std::process::Child,
}

impl Paused {
    /// Starts `cmd` (its stdout as the caller set it) and waits until it reaches `point`.
    pub fn at(mut cmd: std::process::Command, point: &str) -> Paused {
        let mut child = cmd
            .env("CVMFS_OCI_PAUSE_AT", point)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stderr = child.stderr.as_mut().unwrap();
        // Byte by byte: what follows the line stays for `resume`'s output.
        let mut byte = [0u8];
        while !line.ends_with('\n') && std::io::Read::read(stderr, &mut byte).unwrap() == 1 {
            line.push(byte[0] as char);
        }
        assert!(line.contains("paused"), "{line}");
        Paused { child }
    }

    /// Lets it go on; its output once it ends.
    pub fn resume(mut self) -> std::process::Output {
        let mut stdin = self.child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, b"\n").unwrap();
        drop(stdin);
        self.child.wait_with_output().unwrap()
    }
}
