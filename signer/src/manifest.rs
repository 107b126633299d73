//! The manifest `.cvmfspublished`: root catalog, revision, certificate and other pointers,
//! signed with the repository key (RSA PKCS#1 v1.5 with SHA-1 DigestInfo over the ASCII hash
//! text, spec §3.3).

use std::collections::BTreeMap;
use std::str::FromStr;

use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private};
use openssl::sign::{Signer, Verifier};
use openssl::x509::X509;

use crate::digest::HashAlgo;
use crate::envelope;
use crate::error::{ossl, Error, Result};

const ITEM: &str = "manifest";

/// MD5 of the empty root path; clients reject any other `R` value.
pub const ROOT_PATH_HASH: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// The fields of a manifest. Hash texts are lowercase hex (plus `-rmd160`/`-shake128` tags),
/// without object suffix letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// `C`: root catalog hash text.
    pub root_catalog: String,
    /// `B`: size of the uncompressed root catalog file.
    pub root_size: u64,
    /// `D`: TTL in seconds.
    pub ttl: u32,
    /// `S`: revision, equal to the root catalog's.
    pub revision: u64,
    /// `G`: garbage-collectable.
    pub gc: bool,
    /// `A`: alternative `.cvmfsalt-*` names.
    pub alt: bool,
    /// `N`: repository name; omitted from the body when empty.
    pub fqrn: String,
    /// `X`: certificate object hash text; omitted from the body when empty.
    pub certificate: String,
    /// `H`: history database hash text.
    pub history: Option<String>,
    /// `T`: publish time, unix seconds; omitted from the body when not positive.
    pub timestamp: i64,
    /// `M`: meta-info hash text.
    pub meta_info: Option<String>,
    /// `Y`: reflog hash text.
    pub reflog: Option<String>,
}

/// A parsed manifest file together with the exact bytes that were hashed and signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedManifest {
    pub manifest: Manifest,
    pub body: Vec<u8>,
    pub hash_text: String,
    pub signature: Vec<u8>,
}

impl Manifest {
    /// The body in cvmfs's canonical order `C B R D S G A N X H T M Y`.
    pub fn body(&self) -> Vec<u8> {
        let yes_no = |flag: bool| if flag { "yes" } else { "no" };
        let mut out = format!(
            "C{}\nB{}\nR{ROOT_PATH_HASH}\nD{}\nS{}\nG{}\nA{}\n",
            self.root_catalog,
            self.root_size,
            self.ttl,
            self.revision,
            yes_no(self.gc),
            yes_no(self.alt)
        );
        let mut line = |letter: char, value: &str| {
            out.push(letter);
            out.push_str(value);
            out.push('\n');
        };
        if !self.fqrn.is_empty() {
            line('N', &self.fqrn);
        }
        if !self.certificate.is_empty() {
            line('X', &self.certificate);
        }
        if let Some(history) = &self.history {
            line('H', history);
        }
        if self.timestamp > 0 {
            line('T', &self.timestamp.to_string());
        }
        if let Some(meta_info) = &self.meta_info {
            line('M', meta_info);
        }
        if let Some(reflog) = &self.reflog {
            line('Y', reflog);
        }
        out.into_bytes()
    }

    /// The signed file. The body is hashed with the algorithm of the root catalog hash
    /// (SHA-1 for untagged hashes); the signature is always RSA-SHA1 over the hash text.
    pub fn sign(&self, repo_key: &PKey<Private>) -> Result<Vec<u8>> {
        let algo = self.validate()?;
        if repo_key.id() != Id::RSA {
            return Err(Error::Invalid {
                item: ITEM,
                reason: "the repository key is not an RSA key".to_string(),
            });
        }
        let body = self.body();
        let hash_text = algo.hash_text(&body)?;
        let mut signer = Signer::new(MessageDigest::sha1(), repo_key)
            .map_err(ossl("manifest: signing with the repository key"))?;
        signer
            .update(hash_text.as_bytes())
            .map_err(ossl("manifest: signing with the repository key"))?;
        let signature = signer
            .sign_to_vec()
            .map_err(ossl("manifest: signing with the repository key"))?;
        Ok(envelope::assemble(&body, &hash_text, &signature))
    }

    /// Splits and parses a manifest file without checking hash or signature. Unknown letters
    /// are ignored and a later duplicate wins, as in cvmfs; `C`, `R`, `D`, `S` are mandatory.
    pub fn parse(bytes: &[u8]) -> Result<SignedManifest> {
        let env = envelope::split(ITEM, bytes)?;
        let manifest = parse_body(env.body)?;
        Ok(SignedManifest {
            manifest,
            body: env.body.to_vec(),
            hash_text: env.hash_text.to_string(),
            signature: env.signature.to_vec(),
        })
    }

    /// Checks the body hash and the signature against the certificate's public key, then
    /// parses. Whether `X` names this certificate is for the caller (it needs the object store).
    pub fn verify(bytes: &[u8], certificate: &X509) -> Result<Manifest> {
        let env = envelope::split(ITEM, bytes)?;
        env.check_hash(ITEM)?;
        let key = certificate
            .public_key()
            .map_err(ossl("certificate: reading its public key"))?;
        let mut verifier = Verifier::new(MessageDigest::sha1(), &key)
            .map_err(ossl("manifest: preparing signature verification"))?;
        // Any OpenSSL complaint about the signature bytes means "does not verify".
        let verified = verifier
            .update(env.hash_text.as_bytes())
            .and_then(|()| verifier.verify(env.signature))
            .unwrap_or(false);
        if !verified {
            return Err(Error::BadSignature {
                item: ITEM,
                against: "the public key of the repository certificate",
            });
        }
        parse_body(env.body)
    }

    /// Refuses values that would produce a body cvmfs misreads; returns the body hash algorithm.
    fn validate(&self) -> Result<HashAlgo> {
        let invalid = |reason: String| Error::Invalid { item: ITEM, reason };
        let algo = HashAlgo::of_hash_text(&self.root_catalog).ok_or_else(|| {
            invalid(format!(
                "C {:?} is not a lowercase hash text",
                self.root_catalog
            ))
        })?;
        let optional = [
            ('X', Some(&self.certificate).filter(|c| !c.is_empty())),
            ('H', self.history.as_ref()),
            ('M', self.meta_info.as_ref()),
            ('Y', self.reflog.as_ref()),
        ];
        for (letter, value) in optional {
            if let Some(value) = value.filter(|v| HashAlgo::of_hash_text(v).is_none()) {
                return Err(invalid(format!(
                    "{letter} {value:?} is not a lowercase hash text"
                )));
            }
        }
        if self.fqrn.contains(['\n', '\r']) {
            return Err(invalid("N contains a line break".to_string()));
        }
        Ok(algo)
    }
}

/// Reads `<letter><value>` lines into a map like cvmfs `ParseKeyvalMem` (empty lines skipped).
fn key_values(body: &[u8]) -> BTreeMap<u8, &[u8]> {
    body.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| (line[0], &line[1..]))
        .collect()
}

fn parse_body(body: &[u8]) -> Result<Manifest> {
    let fields = key_values(body);
    let text = |letter: u8| -> Result<Option<&str>> {
        fields
            .get(&letter)
            .map(|value| {
                std::str::from_utf8(value).map_err(|_| malformed(letter, "is not UTF-8 text"))
            })
            .transpose()
    };
    let required = |letter: u8| text(letter)?.ok_or_else(|| malformed(letter, "is missing"));
    let hash = |letter: u8| -> Result<Option<String>> {
        match text(letter)? {
            Some(v) if HashAlgo::of_hash_text(v).is_some() => Ok(Some(v.to_string())),
            Some(_) => Err(malformed(letter, "is not a lowercase hash text")),
            None => Ok(None),
        }
    };
    if required(b'R')? != ROOT_PATH_HASH {
        return Err(malformed(b'R', "is not the MD5 of the empty root path"));
    }
    let timestamp: i64 = number(b'T', text(b'T')?)?.unwrap_or(0);
    if timestamp < 0 {
        return Err(malformed(b'T', "is negative"));
    }
    Ok(Manifest {
        root_catalog: hash(b'C')?.ok_or_else(|| malformed(b'C', "is missing"))?,
        root_size: number(b'B', text(b'B')?)?.unwrap_or(0),
        ttl: number(b'D', Some(required(b'D')?))?.unwrap_or_default(),
        revision: number(b'S', Some(required(b'S')?))?.unwrap_or_default(),
        gc: text(b'G')? == Some("yes"),
        alt: text(b'A')? == Some("yes"),
        fqrn: text(b'N')?.unwrap_or_default().to_string(),
        certificate: hash(b'X')?.unwrap_or_default(),
        history: hash(b'H')?,
        timestamp,
        meta_info: hash(b'M')?,
        reflog: hash(b'Y')?,
    })
}

/// A decimal field: digits only (no sign, no spaces), within the type's range.
fn number<T: FromStr>(letter: u8, value: Option<&str>) -> Result<Option<T>> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(letter, "is not a decimal number"));
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| malformed(letter, "is out of range"))
}

fn malformed(letter: u8, what: &str) -> Error {
    Error::Malformed {
        item: ITEM,
        reason: format!("field {} {what}", char::from(letter)),
    }
}

#[cfg(test)]
mod tests {
    use openssl::rsa::Padding;

    use super::*;
    use crate::digest::sha1_text;
    use crate::test_keys::{keys, other_keys};

    const SPEC_BODY: &str = "C0123456789abcdef0123456789abcdef01234567\nB57344\n\
        Rd41d8cd98f00b204e9800998ecf8427e\nD240\nS1\nGno\nAno\nNtest.example.org\n\
        X89abcdef0123456789abcdef0123456789abcdef\nT1700000000\n";

    fn spec_manifest() -> Manifest {
        Manifest {
            root_catalog: "0123456789abcdef0123456789abcdef01234567".to_string(),
            root_size: 57344,
            ttl: 240,
            revision: 1,
            gc: false,
            alt: false,
            fqrn: "test.example.org".to_string(),
            certificate: "89abcdef0123456789abcdef0123456789abcdef".to_string(),
            history: None,
            timestamp: 1_700_000_000,
            meta_info: None,
            reflog: None,
        }
    }

    fn full_manifest() -> Manifest {
        Manifest {
            gc: true,
            alt: true,
            history: Some("1111111111111111111111111111111111111111".to_string()),
            meta_info: Some("2222222222222222222222222222222222222222".to_string()),
            reflog: Some("3333333333333333333333333333333333333333".to_string()),
            ..spec_manifest()
        }
    }

    fn signed() -> Vec<u8> {
        spec_manifest().sign(&keys().repo_key).unwrap()
    }

    fn file_with(body: &str) -> Vec<u8> {
        envelope::assemble(body.as_bytes(), &sha1_text(body.as_bytes()), b"sig")
    }

    #[test]
    fn spec_vector_body_and_hash() {
        let body = spec_manifest().body();
        assert_eq!(String::from_utf8(body.clone()).unwrap(), SPEC_BODY);
        assert_eq!(body.len(), 171);
        assert_eq!(sha1_text(&body), "600ff80606b9311f5d6b9cafa924f545ca5b4091");
    }

    #[test]
    fn body_uses_canonical_order_and_omits_unset_fields() {
        let expected = "C0123456789abcdef0123456789abcdef01234567\nB57344\n\
            Rd41d8cd98f00b204e9800998ecf8427e\nD240\nS1\nGyes\nAyes\nNtest.example.org\n\
            X89abcdef0123456789abcdef0123456789abcdef\n\
            H1111111111111111111111111111111111111111\nT1700000000\n\
            M2222222222222222222222222222222222222222\n\
            Y3333333333333333333333333333333333333333\n";
        assert_eq!(String::from_utf8(full_manifest().body()).unwrap(), expected);
        let bare = Manifest {
            fqrn: String::new(),
            certificate: String::new(),
            timestamp: 0,
            ..spec_manifest()
        };
        let text = String::from_utf8(bare.body()).unwrap();
        assert_eq!(text.lines().count(), 7);
        assert!(text.ends_with("Gno\nAno\n"), "{text}");
    }

    #[test]
    fn sign_then_verify_and_parse_round_trip() {
        for manifest in [spec_manifest(), full_manifest()] {
            let file = manifest.sign(&keys().repo_key).unwrap();
            let parsed = Manifest::parse(&file).unwrap();
            assert_eq!(parsed.manifest, manifest);
            assert_eq!(parsed.body, manifest.body());
            assert_eq!(parsed.hash_text, sha1_text(&parsed.body));
            assert_eq!(parsed.signature.len(), 256);
            assert!(file.ends_with(&parsed.signature));
            assert_eq!(
                file.len(),
                parsed.body.len() + 3 + 41 + parsed.signature.len()
            );
            assert_eq!(
                Manifest::verify(&file, &keys().certificate).unwrap(),
                manifest
            );
        }
    }

    #[test]
    fn shake128_repository_hashes_body_with_shake128() {
        let manifest = Manifest {
            root_catalog: "0123456789abcdef0123456789abcdef01234567-shake128".to_string(),
            ..spec_manifest()
        };
        let file = manifest.sign(&keys().repo_key).unwrap();
        let parsed = Manifest::parse(&file).unwrap();
        let expected = HashAlgo::Shake128.hash_text(&parsed.body).unwrap();
        assert_eq!(parsed.hash_text, expected);
        assert_eq!(
            Manifest::verify(&file, &keys().certificate).unwrap(),
            manifest
        );
    }

    #[test]
    fn tampered_body_fails_hash_check() {
        let mut file = signed();
        file[SPEC_BODY.find("S1").unwrap() + 1] = b'2';
        let err = Manifest::verify(&file, &keys().certificate).unwrap_err();
        assert!(
            matches!(
                err,
                Error::HashMismatch {
                    item: "manifest",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn tampered_body_with_recomputed_hash_fails_signature() {
        let parsed = Manifest::parse(&signed()).unwrap();
        let body = SPEC_BODY.replace("S1\n", "S2\n");
        let forged = envelope::assemble(
            body.as_bytes(),
            &sha1_text(body.as_bytes()),
            &parsed.signature,
        );
        let err = Manifest::verify(&forged, &keys().certificate).unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    }

    #[test]
    fn tampered_signature_fails() {
        let mut file = signed();
        let pos = file.len() - 100;
        file[pos] ^= 0x80;
        let err = Manifest::verify(&file, &keys().certificate).unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifest: signature does not verify with the public key of the repository certificate"
        );
        let mut file = signed();
        file.push(b'\n');
        let err = Manifest::verify(&file, &keys().certificate).unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    }

    #[test]
    fn wrong_certificate_fails() {
        let err = Manifest::verify(&signed(), &other_keys().certificate).unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    }

    #[test]
    fn whitelist_style_signature_is_not_accepted() {
        // Trap 2: raw PKCS#1 padding without DigestInfo is the whitelist's scheme.
        let body = spec_manifest().body();
        let hash_text = sha1_text(&body);
        let rsa = keys().repo_key.rsa().unwrap();
        let mut sig = vec![0u8; rsa.size() as usize];
        let len = rsa
            .private_encrypt(hash_text.as_bytes(), &mut sig, Padding::PKCS1)
            .unwrap();
        let file = envelope::assemble(&body, &hash_text, &sig[..len]);
        let err = Manifest::verify(&file, &keys().certificate).unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    }

    #[test]
    fn parse_is_tolerant_like_cvmfs() {
        let body = format!("Qunknown\n\n{SPEC_BODY}S7\nZtip1\nZtip2\nL\nGmaybe\n");
        let parsed = Manifest::parse(&file_with(&body)).unwrap().manifest;
        assert_eq!(parsed.revision, 7);
        assert!(!parsed.gc);
        assert_eq!(parsed.fqrn, "test.example.org");
        let minimal = "C0123456789abcdef0123456789abcdef01234567\n\
                       Rd41d8cd98f00b204e9800998ecf8427e\nD240\nS1\n";
        let parsed = Manifest::parse(&file_with(minimal)).unwrap().manifest;
        assert_eq!(parsed.root_size, 0);
        assert_eq!(parsed.timestamp, 0);
        assert_eq!(parsed.fqrn, "");
        assert_eq!(parsed.certificate, "");
        assert_eq!(parsed.history, None);
    }

    #[test]
    fn parse_rejects_missing_or_malformed_fields() {
        let cases = [
            ("C0123456789abcdef0123456789abcdef01234567\n", "", "field C"),
            ("Rd41d8cd98f00b204e9800998ecf8427e\n", "", "field R"),
            ("D240\n", "", "field D"),
            ("S1\n", "", "field S"),
            (
                "C0123456789abcdef0123456789abcdef01234567\n",
                "C0123456789ABCDEF0123456789ABCDEF01234567\n",
                "field C",
            ),
            (
                "Rd41d8cd98f00b204e9800998ecf8427e\n",
                "R00000000000000000000000000000000\n",
                "field R",
            ),
            ("D240\n", "D24O\n", "field D"),
            ("D240\n", "D4294967296\n", "field D"),
            ("S1\n", "S-1\n", "field S"),
            ("B57344\n", "B 57344\n", "field B"),
            ("T1700000000\n", "T-5\n", "field T"),
            (
                "X89abcdef0123456789abcdef0123456789abcdef\n",
                "X89abcdef0123456789abcdef0123456789abcdefX\n",
                "field X",
            ),
        ];
        for (from, to, field) in cases {
            let body = SPEC_BODY.replace(from, to);
            let err = Manifest::parse(&file_with(&body)).unwrap_err();
            assert!(
                matches!(&err, Error::Malformed { item: "manifest", reason } if reason.contains(field)),
                "{from:?} -> {to:?}: {err}"
            );
        }
    }

    #[test]
    fn sign_refuses_unwritable_values() {
        let cases = [
            Manifest {
                root_catalog: "0123456789ABCDEF0123456789ABCDEF01234567".to_string(),
                ..spec_manifest()
            },
            Manifest {
                certificate: "89abcdef0123456789abcdef0123456789abcdefX".to_string(),
                ..spec_manifest()
            },
            Manifest {
                history: Some(String::new()),
                ..spec_manifest()
            },
            Manifest {
                fqrn: "a\nS9".to_string(),
                ..spec_manifest()
            },
        ];
        for manifest in cases {
            let err = manifest.sign(&keys().repo_key).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Invalid {
                        item: "manifest",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}
