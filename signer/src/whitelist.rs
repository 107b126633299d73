//! The `.cvmfswhitelist`: which repository certificates the master key vouches for, until when.
//!
//! The signature is raw RSA PKCS#1 v1.5 type-1 padding over the ASCII hash text, without
//! DigestInfo (spec §4.3) — unlike the manifest signature.

use openssl::pkey::{PKey, Private, Public};
use openssl::rsa::Padding;

use crate::digest::{sha1_text, HashAlgo};
use crate::envelope::{self, Envelope};
use crate::error::{ossl, Error, Result};
use crate::time::{hour_floor, parse_utc_stamp, utc_stamp};

const ITEM: &str = "whitelist";
const SECONDS_PER_DAY: i64 = 86_400;

/// The content of a whitelist; times are unix seconds, UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whitelist {
    pub created: i64,
    pub expires: i64,
    pub fqrn: String,
    /// Certificate fingerprints as written, e.g. `D4:E3:…:57` (see `certificate_fingerprint`).
    pub fingerprints: Vec<String>,
}

/// A parsed whitelist file together with the exact bytes that were hashed and signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedWhitelist {
    pub whitelist: Whitelist,
    pub body: Vec<u8>,
    pub hash_text: String,
    pub signature: Vec<u8>,
}

impl Whitelist {
    /// A whitelist for one certificate, created `now`, valid for `valid_days` days
    /// (cvmfs_server uses 30).
    pub fn new(fqrn: &str, fingerprint: String, now: i64, valid_days: u32) -> Whitelist {
        Whitelist {
            created: now,
            expires: now.saturating_add(i64::from(valid_days) * SECONDS_PER_DAY),
            fqrn: fqrn.to_string(),
            fingerprints: vec![fingerprint],
        }
    }

    /// The unsigned part: creation stamp, `E` + expiry stamp, `N` + fqrn, fingerprints.
    pub fn body(&self) -> Result<Vec<u8>> {
        let created = utc_stamp(self.created);
        let expires = format!("E{}", utc_stamp(self.expires));
        if created.len() != 14 || expires.len() != 15 {
            return Err(invalid(
                "creation or expiry time is outside the years 0000-9999",
            ));
        }
        if self.fqrn.is_empty() || self.fqrn.contains(['\n', '\r']) {
            return Err(invalid(
                "the repository name is empty or contains a line break",
            ));
        }
        if self.fingerprints.is_empty() {
            return Err(invalid("no certificate fingerprint"));
        }
        let mut body = format!("{created}\n{expires}\nN{}\n", self.fqrn);
        for fingerprint in &self.fingerprints {
            if fingerprint.contains(['\n', '\r']) || fingerprint_hash_text(fingerprint).is_none() {
                return Err(invalid(&format!(
                    "{fingerprint:?} is not a certificate fingerprint"
                )));
            }
            body.push_str(fingerprint);
            body.push('\n');
        }
        Ok(body.into_bytes())
    }

    /// The signed file: body, `--`, SHA-1 hash text, raw PKCS#1 signature by the master key.
    pub fn sign(&self, master: &PKey<Private>) -> Result<Vec<u8>> {
        let body = self.body()?;
        let hash_text = sha1_text(&body);
        let rsa = master
            .rsa()
            .map_err(ossl("whitelist: master key is not an RSA key"))?;
        let mut signature = vec![0u8; rsa.size() as usize];
        let len = rsa
            .private_encrypt(hash_text.as_bytes(), &mut signature, Padding::PKCS1)
            .map_err(ossl("whitelist: signing with the master key"))?;
        signature.truncate(len);
        Ok(envelope::assemble(&body, &hash_text, &signature))
    }

    /// Splits and parses a whitelist file without checking hash, signature or expiry.
    pub fn parse(bytes: &[u8]) -> Result<SignedWhitelist> {
        let env = envelope::split(ITEM, bytes)?;
        let whitelist = parse_body(env.body)?;
        Ok(SignedWhitelist {
            whitelist,
            body: env.body.to_vec(),
            hash_text: env.hash_text.to_string(),
            signature: env.signature.to_vec(),
        })
    }

    /// Full check as a client does it: body hash, signature by one of `masters`, repository
    /// name, and expiry (expired from the start of the expiry hour on, spec §4.5).
    pub fn verify(
        bytes: &[u8],
        masters: &[PKey<Public>],
        fqrn: &str,
        now: i64,
    ) -> Result<Whitelist> {
        let env = envelope::split(ITEM, bytes)?;
        // Integrity first, so a damaged file reports the damage rather than a side effect.
        env.check_hash(ITEM)?;
        if !masters.iter().any(|key| signature_recovers(&env, key)) {
            return Err(Error::BadSignature {
                item: ITEM,
                against: "any trusted master key",
            });
        }
        let whitelist = parse_body(env.body)?;
        if whitelist.fqrn != fqrn {
            return Err(Error::WrongFqrn {
                item: ITEM,
                found: whitelist.fqrn,
                expected: fqrn.to_string(),
            });
        }
        if now >= hour_floor(whitelist.expires) {
            return Err(Error::Expired {
                expires: utc_stamp(whitelist.expires),
                now: utc_stamp(now),
            });
        }
        reject_extra_requirements(env.body)?;
        Ok(whitelist)
    }

    /// Whether the whitelist in `bytes` is intact and signed by one of `masters`, whatever its
    /// name and expiry: tells whose repository a stratum holds (an expired whitelist is
    /// still its owner's, and `resign` renews it).
    pub fn signed_by(bytes: &[u8], masters: &[PKey<Public>]) -> Result<bool> {
        let env = envelope::split(ITEM, bytes)?;
        env.check_hash(ITEM)?;
        Ok(masters.iter().any(|key| signature_recovers(&env, key)))
    }

    /// True if `fingerprint` (any case, with or without colons) is listed.
    pub fn lists_fingerprint(&self, fingerprint: &str) -> bool {
        let Some(wanted) = fingerprint_hash_text(fingerprint) else {
            return false;
        };
        self.fingerprints
            .iter()
            .any(|listed| fingerprint_hash_text(listed).as_deref() == Some(wanted.as_str()))
    }
}

fn invalid(reason: &str) -> Error {
    Error::Invalid {
        item: ITEM,
        reason: reason.to_string(),
    }
}

fn malformed(reason: String) -> Error {
    Error::Malformed { item: ITEM, reason }
}

/// True if the signature, RSA-decrypted with `key`, is exactly the hash text.
fn signature_recovers(env: &Envelope<'_>, key: &PKey<Public>) -> bool {
    let Ok(rsa) = key.rsa() else {
        return false;
    };
    let mut recovered = vec![0u8; rsa.size() as usize];
    match rsa.public_decrypt(env.signature, &mut recovered, Padding::PKCS1) {
        Ok(len) => &recovered[..len] == env.hash_text.as_bytes(),
        Err(_) => false,
    }
}

fn parse_body(body: &[u8]) -> Result<Whitelist> {
    let text =
        std::str::from_utf8(body).map_err(|_| malformed("body is not UTF-8 text".to_string()))?;
    // The body ends with '\n', so the last split piece is empty.
    let mut lines = text.split('\n');
    let created_line = lines.next().unwrap_or_default();
    if created_line.len() != 14 {
        return Err(malformed(format!(
            "line 1 must have 14 characters, has {}",
            created_line.len()
        )));
    }
    let created = parse_utc_stamp(created_line)
        .ok_or_else(|| malformed(format!("line 1 {created_line:?} is not YYYYMMDDhhmmss")))?;
    let expires_line = lines.next().unwrap_or_default();
    if expires_line.len() != 15 {
        return Err(malformed(format!(
            "line 2 must have 15 characters, has {}",
            expires_line.len()
        )));
    }
    let expires = expires_line
        .strip_prefix('E')
        .and_then(parse_utc_stamp)
        .ok_or_else(|| malformed(format!("line 2 {expires_line:?} is not EYYYYMMDDhhmmss")))?;
    let fqrn = lines
        .next()
        .and_then(|line| line.strip_prefix('N'))
        .ok_or_else(|| malformed("line 3 must be N<repository name>".to_string()))?;
    // Like cvmfs, lines that are not fingerprints (Vpkcs7, Wcachain, junk) are skipped here.
    let fingerprints = lines
        .filter_map(|line| fingerprint_field(line))
        .filter(|field| fingerprint_hash_text(field).is_some())
        .map(str::to_string)
        .collect();
    Ok(Whitelist {
        created,
        expires,
        fqrn: fqrn.to_string(),
        fingerprints,
    })
}

/// The fingerprint part of a line: cvmfs stops at the first space, tab or '#'.
fn fingerprint_field(line: &str) -> Option<&str> {
    let field = line.split([' ', '\t', '#']).next().unwrap_or_default();
    (!field.is_empty()).then_some(field)
}

/// The hash text a fingerprint stands for: colons dropped, lowercased (cvmfs
/// `MkFromFingerprint`); None if that is not a valid hash text.
fn fingerprint_hash_text(fingerprint: &str) -> Option<String> {
    let field = fingerprint_field(fingerprint)?;
    let text: String = field
        .chars()
        .filter(|&c| c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    HashAlgo::of_hash_text(&text).map(|_| text)
}

/// `Vpkcs7` and `Wcachain` ask clients for checks this crate does not perform; accepting such
/// a whitelist would claim more than was verified.
fn reject_extra_requirements(body: &[u8]) -> Result<()> {
    for (marker, what) in [
        (&b"\nVpkcs7\n"[..], "Vpkcs7 (detached PKCS#7 signature)"),
        (&b"\nWcachain\n"[..], "Wcachain (CA chain verification)"),
    ] {
        if body.windows(marker.len()).any(|w| w == marker) {
            return Err(Error::Unsupported {
                item: ITEM,
                reason: format!("{what} is required but not checked by this tool"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use openssl::hash::MessageDigest;
    use openssl::sign::Signer;

    use super::*;
    use crate::test_keys::{keys, other_keys};

    const FQRN: &str = "test.example.org";
    /// 2024-01-01 00:00:00 UTC.
    const NOW: i64 = 1_704_067_200;

    fn spec_whitelist() -> Whitelist {
        Whitelist {
            created: NOW,
            expires: NOW + 30 * 86_400,
            fqrn: FQRN.to_string(),
            fingerprints: vec![["AB"; 20].join(":")],
        }
    }

    fn master() -> &'static PKey<Private> {
        keys().master.as_ref().unwrap()
    }

    fn trusted() -> Vec<PKey<Public>> {
        vec![keys().master_public.clone()]
    }

    /// Signs arbitrary body bytes the way `sign` does, to build files `body()` refuses.
    fn sign_raw(body: &[u8]) -> Vec<u8> {
        let hash_text = sha1_text(body);
        let rsa = master().rsa().unwrap();
        let mut sig = vec![0u8; rsa.size() as usize];
        let len = rsa
            .private_encrypt(hash_text.as_bytes(), &mut sig, Padding::PKCS1)
            .unwrap();
        envelope::assemble(body, &hash_text, &sig[..len])
    }

    fn verify(bytes: &[u8], now: i64) -> Result<Whitelist> {
        Whitelist::verify(bytes, &trusted(), FQRN, now)
    }

    #[test]
    fn spec_vector_body_and_hash() {
        let body = spec_whitelist().body().unwrap();
        let expected = "20240101000000\nE20240131000000\nNtest.example.org\n\
                        AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB\n";
        assert_eq!(String::from_utf8(body.clone()).unwrap(), expected);
        assert_eq!(sha1_text(&body), "3079a12882fba8f23e48e5a6fe8f14bc91d293d0");
    }

    #[test]
    fn new_sets_times_and_single_fingerprint() {
        let wl = Whitelist::new(FQRN, "FP".to_string(), 100, 30);
        assert_eq!(wl.created, 100);
        assert_eq!(wl.expires, 100 + 30 * 86_400);
        assert_eq!(wl.fqrn, FQRN);
        assert_eq!(wl.fingerprints, ["FP"]);
    }

    #[test]
    fn sign_then_verify_and_parse_round_trip() {
        let wl = Whitelist::new(FQRN, keys().fingerprint().unwrap(), NOW + 59, 30);
        let file = wl.sign(master()).unwrap();
        let parsed = Whitelist::parse(&file).unwrap();
        assert_eq!(parsed.whitelist, wl);
        assert_eq!(parsed.body, wl.body().unwrap());
        assert_eq!(parsed.hash_text, sha1_text(&parsed.body));
        assert_eq!(parsed.signature.len(), 256);
        // No trailing newline: the file ends with the signature bytes.
        assert!(file.ends_with(&parsed.signature));
        let expected_len = parsed.body.len() + 3 + 41 + 256;
        assert_eq!(file.len(), expected_len);
        assert_eq!(verify(&file, NOW).unwrap(), wl);
    }

    #[test]
    fn tampered_body_fails_hash_check() {
        let file = spec_whitelist().sign(master()).unwrap();
        let mut bad = file.clone();
        let pos = bad.windows(3).position(|w| w == b"AB:").unwrap();
        bad[pos] = b'C';
        let err = verify(&bad, NOW).unwrap_err();
        assert!(
            matches!(
                err,
                Error::HashMismatch {
                    item: "whitelist",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn tampered_body_with_recomputed_hash_fails_signature() {
        let file = spec_whitelist().sign(master()).unwrap();
        let parsed = Whitelist::parse(&file).unwrap();
        let body = String::from_utf8(parsed.body)
            .unwrap()
            .replace("E2024", "E2034");
        let forged = envelope::assemble(
            body.as_bytes(),
            &sha1_text(body.as_bytes()),
            &parsed.signature,
        );
        let err = verify(&forged, NOW).unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    }

    #[test]
    fn tampered_signature_fails() {
        let mut file = spec_whitelist().sign(master()).unwrap();
        let last = file.len() - 1;
        file[last] ^= 1;
        let err = verify(&file, NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "whitelist: signature does not verify with any trusted master key"
        );
        // A trailing newline (wrong length) is also a bad signature.
        let mut file = spec_whitelist().sign(master()).unwrap();
        file.push(b'\n');
        assert!(matches!(
            verify(&file, NOW),
            Err(Error::BadSignature { .. })
        ));
    }

    #[test]
    fn wrong_master_key_fails_and_any_trusted_key_suffices() {
        let file = spec_whitelist().sign(master()).unwrap();
        let wrong = vec![other_keys().master_public.clone()];
        let err = Whitelist::verify(&file, &wrong, FQRN, NOW).unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");
        assert!(Whitelist::verify(&file, &[], FQRN, NOW).is_err());
        let both = vec![
            other_keys().master_public.clone(),
            keys().master_public.clone(),
        ];
        assert!(Whitelist::verify(&file, &both, FQRN, NOW).is_ok());
    }

    #[test]
    fn manifest_style_signature_is_not_accepted() {
        // Trap 2: RSA-SHA1 with DigestInfo is the manifest's scheme, not the whitelist's.
        let body = spec_whitelist().body().unwrap();
        let hash_text = sha1_text(&body);
        let mut signer = Signer::new(MessageDigest::sha1(), master()).unwrap();
        signer.update(hash_text.as_bytes()).unwrap();
        let sig = signer.sign_to_vec().unwrap();
        let file = envelope::assemble(&body, &hash_text, &sig);
        assert!(matches!(
            verify(&file, NOW),
            Err(Error::BadSignature { .. })
        ));
    }

    #[test]
    fn expiry_is_checked_per_hour() {
        let mut wl = spec_whitelist();
        // Expires 2024-01-31 12:30:00: already expired from 12:00:00 on.
        wl.expires = NOW + 30 * 86_400 + 12 * 3600 + 30 * 60;
        let file = wl.sign(master()).unwrap();
        let noon = NOW + 30 * 86_400 + 12 * 3600;
        assert!(verify(&file, noon - 1).is_ok());
        let err = verify(&file, noon).unwrap_err();
        assert!(matches!(err, Error::Expired { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "whitelist: expired at 20240131123000 UTC (checked per hour), now is 20240131120000 UTC"
        );
        assert!(matches!(
            verify(&file, noon + 86_400),
            Err(Error::Expired { .. })
        ));
    }

    #[test]
    fn wrong_fqrn_fails() {
        let file = spec_whitelist().sign(master()).unwrap();
        let err = Whitelist::verify(&file, &trusted(), "other.example.org", NOW).unwrap_err();
        assert!(
            matches!(&err, Error::WrongFqrn { found, expected, .. }
                if found == FQRN && expected == "other.example.org"),
            "{err}"
        );
    }

    #[test]
    fn line_lengths_are_enforced() {
        let fp = ["AB"; 20].join(":");
        let cases = [
            format!("2024010100000\nE20240131000000\nN{FQRN}\n{fp}\n"),
            format!("20240101000000\nE2024013100000\nN{FQRN}\n{fp}\n"),
            format!("20240101000000\nE202401310000000\nN{FQRN}\n{fp}\n"),
            format!("20240101000000\nX20240131000000\nN{FQRN}\n{fp}\n"),
            format!("20240101000000\nE20240131000000\n{FQRN}\n{fp}\n"),
        ];
        for body in cases {
            let err = verify(&sign_raw(body.as_bytes()), NOW).unwrap_err();
            assert!(matches!(err, Error::Malformed { .. }), "{body:?}: {err}");
        }
    }

    #[test]
    fn parse_skips_comments_and_non_fingerprint_lines() {
        let fp = ["AB"; 20].join(":");
        let other = ["0f"; 20].join(":");
        let body =
            format!("20240101000000\nE20240131000000\nN{FQRN}\n{fp} # old cert\n\njunk\n{other}\n");
        let wl = verify(&sign_raw(body.as_bytes()), NOW).unwrap();
        assert_eq!(wl.fingerprints, [fp.clone(), other]);
        assert!(wl.lists_fingerprint(&fp.to_lowercase()));
        assert!(wl.lists_fingerprint(&fp.replace(':', "")));
        assert!(wl.lists_fingerprint(&["0F"; 20].join(":")));
        assert!(!wl.lists_fingerprint(&["AC"; 20].join(":")));
        assert!(!wl.lists_fingerprint("AB"));
    }

    #[test]
    fn extra_client_requirements_are_refused() {
        let fp = ["AB"; 20].join(":");
        for extra in ["Vpkcs7", "Wcachain"] {
            let body = format!("20240101000000\nE20240131000000\nN{FQRN}\n{extra}\n{fp}\n");
            let err = verify(&sign_raw(body.as_bytes()), NOW).unwrap_err();
            assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        }
    }

    #[test]
    fn body_refuses_unwritable_values() {
        let mut wl = spec_whitelist();
        wl.fingerprints = vec!["not a fingerprint".to_string()];
        assert!(matches!(wl.body(), Err(Error::Invalid { .. })));
        wl.fingerprints = vec![];
        assert!(matches!(wl.body(), Err(Error::Invalid { .. })));
        let mut wl = spec_whitelist();
        wl.fqrn = "a\nb".to_string();
        assert!(matches!(wl.sign(master()), Err(Error::Invalid { .. })));
        let mut wl = spec_whitelist();
        wl.expires = 253_402_300_800; // year 10000
        assert!(matches!(wl.body(), Err(Error::Invalid { .. })));
    }
}
