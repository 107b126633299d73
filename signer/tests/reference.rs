//! Interoperability with a repository written by the real CVMFS 2.12 tools
//! (/work/shared/reference, see its README): its whitelist and manifest must verify here,
//! and our serialisation must reproduce their signed bytes exactly.

use std::fs;
use std::path::{Path, PathBuf};

use signer::{
    certificate_fingerprint, load_public_key, parse_certificate_pem, utc_stamp, Error, Manifest,
    RepoKeys, Whitelist,
};

const FQRN: &str = "ref.test.local";
/// The manifest's publish time `T` (2026-11-25), a moment at which the whitelist is valid.
const PUBLISHED: i64 = 1_795_633_769;

fn reference() -> PathBuf {
    Path::new("/work/shared/reference").to_path_buf()
}

fn read(relative: &str) -> Vec<u8> {
    let path = reference().join(relative);
    fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn master_public() -> openssl::pkey::PKey<openssl::pkey::Public> {
    load_public_key(&reference().join("keys/ref.test.local.pub")).unwrap()
}

fn certificate() -> openssl::x509::X509 {
    parse_certificate_pem(&read("keys/ref.test.local.crt")).unwrap()
}

#[test]
fn reference_whitelist_verifies_with_master_key() {
    let bytes = read("ref.test.local/.cvmfswhitelist");
    let whitelist = Whitelist::verify(&bytes, &[master_public()], FQRN, PUBLISHED).unwrap();
    assert_eq!(whitelist.fqrn, FQRN);
    assert_eq!(utc_stamp(whitelist.expires), "20361125000000");
    assert_eq!(whitelist.fingerprints.len(), 1);

    // Our serialisation of the parsed content is byte-identical to what cvmfs_server signed.
    let signed = Whitelist::parse(&bytes).unwrap();
    assert_eq!(whitelist.body().unwrap(), signed.body);
    assert_eq!(signed.signature.len(), 256);

    // The real clock (the whitelist expires in 2036) and the expiry hour itself.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Whitelist::verify(&bytes, &[master_public()], FQRN, now).unwrap();
    let err = Whitelist::verify(&bytes, &[master_public()], FQRN, whitelist.expires).unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err}");
}

#[test]
fn reference_whitelist_rejects_wrong_name_and_wrong_key() {
    let bytes = read("ref.test.local/.cvmfswhitelist");
    let err =
        Whitelist::verify(&bytes, &[master_public()], "other.test.local", PUBLISHED).unwrap_err();
    assert!(matches!(err, Error::WrongFqrn { .. }), "{err}");
    let stranger = RepoKeys::generate("stranger.test.local").unwrap();
    let err = Whitelist::verify(&bytes, &[stranger.master_public], FQRN, PUBLISHED).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[test]
fn reference_manifest_verifies_with_certificate() {
    let bytes = read("ref.test.local/.cvmfspublished");
    let manifest = Manifest::verify(&bytes, &certificate()).unwrap();
    assert_eq!(manifest.fqrn, FQRN);
    assert_eq!(manifest.revision, 3);
    assert_eq!(manifest.ttl, 240);
    assert_eq!(manifest.timestamp, PUBLISHED);
    assert_eq!(
        manifest.root_catalog,
        "7912aba1f2b1b0e85da68a07e257e6b04ca02d03"
    );
    assert_eq!(
        manifest.certificate,
        "20efa42a430f72055b4673a19a6b35380fc98873"
    );
    assert!(manifest.history.is_some() && manifest.meta_info.is_some());
    assert!(manifest.reflog.is_some());

    // Canonical order and formatting equal cvmfs's own: body() reproduces the signed bytes.
    let signed = Manifest::parse(&bytes).unwrap();
    assert_eq!(manifest.body(), signed.body);

    // The certificate object named by X exists in the store (content checks are the
    // publisher's business).
    let x = &manifest.certificate;
    let object = reference().join(format!("ref.test.local/data/{}/{}X", &x[..2], &x[2..]));
    assert!(object.is_file(), "{}", object.display());
}

#[test]
fn reference_manifest_rejects_other_certificate() {
    let bytes = read("ref.test.local/.cvmfspublished");
    let stranger = RepoKeys::generate("stranger.test.local").unwrap();
    let err = Manifest::verify(&bytes, &stranger.certificate).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[test]
fn reference_certificate_fingerprint_is_whitelisted() {
    let fingerprint = certificate_fingerprint(&certificate()).unwrap();
    assert_eq!(
        fingerprint,
        "D4:E3:FE:72:D2:AF:0C:94:84:38:4F:47:BF:AD:B2:F1:1E:D0:7F:57"
    );
    let bytes = read("ref.test.local/.cvmfswhitelist");
    let whitelist = Whitelist::verify(&bytes, &[master_public()], FQRN, PUBLISHED).unwrap();
    assert!(whitelist.lists_fingerprint(&fingerprint));
    assert_eq!(whitelist.fingerprints, [fingerprint]);
}
