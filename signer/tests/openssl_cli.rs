//! The `openssl` command line as an independent witness: it must read our key files and
//! verify our signatures, produce the same deterministic signatures, and its keys made the
//! way `cvmfs_server mkfs` makes them must load and sign here.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use signer::{certificate_fingerprint, Manifest, RepoKeys, Whitelist};

const FQRN: &str = "witness.example.org";
const NOW: i64 = 1_704_067_200;

/// Runs `openssl` in `dir`; panics with its stderr if it fails or is missing.
fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line tool is required for this test");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One key set written to a temporary directory, shared by the tests of this binary.
fn written_keys() -> &'static (tempfile::TempDir, RepoKeys) {
    static KEYS: OnceLock<(tempfile::TempDir, RepoKeys)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let keys = RepoKeys::generate(FQRN).unwrap();
        keys.write(dir.path(), FQRN).unwrap();
        (dir, keys)
    })
}

fn manifest() -> Manifest {
    Manifest {
        root_catalog: "0123456789abcdef0123456789abcdef01234567".to_string(),
        root_size: 57344,
        ttl: 240,
        revision: 1,
        gc: false,
        alt: false,
        fqrn: FQRN.to_string(),
        certificate: "89abcdef0123456789abcdef0123456789abcdef".to_string(),
        history: None,
        timestamp: NOW,
        meta_info: None,
        reflog: None,
    }
}

#[test]
fn openssl_recovers_whitelist_hash_text_with_master_public_key() {
    let (dir, keys) = written_keys();
    let work = tempfile::tempdir().unwrap();
    let whitelist = Whitelist::new(FQRN, keys.fingerprint().unwrap(), NOW, 30);
    let file = whitelist.sign(keys.master.as_ref().unwrap()).unwrap();
    let signed = Whitelist::parse(&file).unwrap();
    fs::write(work.path().join("wl.sig"), &signed.signature).unwrap();
    fs::write(work.path().join("wl.hash"), &signed.hash_text).unwrap();
    let pub_path = dir.path().join(format!("{FQRN}.pub"));
    let recovered = openssl(
        work.path(),
        &[
            "pkeyutl",
            "-verifyrecover",
            "-pubin",
            "-inkey",
            pub_path.to_str().unwrap(),
            "-in",
            "wl.sig",
        ],
    );
    assert_eq!(String::from_utf8(recovered).unwrap(), signed.hash_text);

    // PKCS#1 v1.5 type-1 signing is deterministic: `openssl pkeyutl -sign` (what
    // cvmfs_server runs) with our master key file gives the very same bytes.
    let master_path = dir.path().join(format!("{FQRN}.masterkey"));
    let theirs = openssl(
        work.path(),
        &[
            "pkeyutl",
            "-sign",
            "-inkey",
            master_path.to_str().unwrap(),
            "-in",
            "wl.hash",
        ],
    );
    assert_eq!(theirs, signed.signature);
}

#[test]
fn openssl_verifies_manifest_signature_with_certificate_key() {
    let (dir, keys) = written_keys();
    let work = tempfile::tempdir().unwrap();
    let file = manifest().sign(&keys.repo_key).unwrap();
    let signed = Manifest::parse(&file).unwrap();
    fs::write(work.path().join("m.sig"), &signed.signature).unwrap();
    fs::write(work.path().join("m.hash"), &signed.hash_text).unwrap();
    let crt = dir.path().join(format!("{FQRN}.crt"));
    let pubkey = openssl(
        work.path(),
        &["x509", "-in", crt.to_str().unwrap(), "-noout", "-pubkey"],
    );
    fs::write(work.path().join("repo.pub"), pubkey).unwrap();
    let out = openssl(
        work.path(),
        &[
            "dgst",
            "-sha1",
            "-verify",
            "repo.pub",
            "-signature",
            "m.sig",
            "m.hash",
        ],
    );
    assert_eq!(String::from_utf8(out).unwrap().trim_end(), "Verified OK");

    // Same bytes as `printf %s "$hash" | openssl dgst -sha1 -sign FQRN.key`.
    let key = dir.path().join(format!("{FQRN}.key"));
    let theirs = openssl(
        work.path(),
        &["dgst", "-sha1", "-sign", key.to_str().unwrap(), "m.hash"],
    );
    assert_eq!(theirs, signed.signature);
}

#[test]
fn openssl_agrees_on_certificate_fingerprint_and_form() {
    let (dir, keys) = written_keys();
    let crt = dir.path().join(format!("{FQRN}.crt"));
    let out = openssl(
        dir.path(),
        &[
            "x509",
            "-in",
            crt.to_str().unwrap(),
            "-noout",
            "-fingerprint",
            "-sha1",
        ],
    );
    let out = String::from_utf8(out).unwrap();
    let (label, theirs) = out.trim_end().split_once('=').unwrap();
    assert!(label.eq_ignore_ascii_case("sha1 Fingerprint"), "{out}");
    let ours = certificate_fingerprint(&keys.certificate).unwrap();
    assert!(theirs.eq_ignore_ascii_case(&ours), "{theirs} vs {ours}");

    let text = openssl(
        dir.path(),
        &["x509", "-in", crt.to_str().unwrap(), "-noout", "-text"],
    );
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("Version: 3 (0x2)"), "{text}");
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(text.contains("Exponent: 65537"), "{text}");
    assert!(
        text.contains("Subject: CN = witness.example.org CernVM-FS Release Managers"),
        "{text}"
    );
    // The private key files parse with the CLI, i.e. they are ordinary PEM keys.
    for name in [format!("{FQRN}.key"), format!("{FQRN}.masterkey")] {
        openssl(dir.path(), &["pkey", "-in", &name, "-noout"]);
    }
}

#[test]
fn keys_made_like_cvmfs_server_mkfs_load_and_sign() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = "mkfs.example.org";
    openssl(d, &["genrsa", "-out", &format!("{name}.masterkey"), "2048"]);
    openssl(
        d,
        &[
            "rsa",
            "-in",
            &format!("{name}.masterkey"),
            "-pubout",
            "-out",
            &format!("{name}.pub"),
        ],
    );
    openssl(d, &["genrsa", "-out", &format!("{name}.key"), "2048"]);
    let subject = format!("/CN={name} CernVM-FS Release Managers");
    openssl(
        d,
        &[
            "req",
            "-new",
            "-subj",
            &subject,
            "-key",
            &format!("{name}.key"),
            "-out",
            "csr",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-days",
            "365",
            "-in",
            "csr",
            "-signkey",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
    let keys = RepoKeys::load(d, name).unwrap();
    let master = keys.master.as_ref().unwrap();
    let whitelist = Whitelist::new(name, keys.fingerprint().unwrap(), NOW, 30);
    let wl = whitelist.sign(master).unwrap();
    Whitelist::verify(&wl, std::slice::from_ref(&keys.master_public), name, NOW).unwrap();
    let m = Manifest {
        fqrn: name.to_string(),
        ..manifest()
    };
    let published = m.sign(&keys.repo_key).unwrap();
    assert_eq!(Manifest::verify(&published, &keys.certificate).unwrap(), m);
}
