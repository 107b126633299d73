//! Master key, repository key and repository certificate: generation, files, fingerprints.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private, Public};
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder, X509};

use crate::error::{io_at, ossl, Error, Result};

const RSA_BITS: u32 = 2048;
const CERT_DAYS: u32 = 365;
/// cvmfs_server truncates long repository names so the CN stays within 64 characters.
const CN_NAME_CHARS: usize = 30;
const PRIVATE_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// The key material of one repository.
#[derive(Debug, Clone)]
pub struct RepoKeys {
    /// Signs the whitelist; absent on machines that only publish (`FQRN.masterkey`).
    pub master: Option<PKey<Private>>,
    /// What clients trust (`FQRN.pub`).
    pub master_public: PKey<Public>,
    /// Signs the manifest (`FQRN.key`).
    pub repo_key: PKey<Private>,
    /// Self-signed envelope of the repository public key (`FQRN.crt`).
    pub certificate: X509,
}

/// The four file names of a repository's keys inside a key directory.
struct KeyFiles {
    master: PathBuf,
    repo_key: PathBuf,
    master_public: PathBuf,
    certificate: PathBuf,
}

impl KeyFiles {
    fn new(dir: &Path, fqrn: &str) -> Result<KeyFiles> {
        let usable = !fqrn.is_empty()
            && fqrn != "."
            && fqrn != ".."
            && !fqrn.contains(['/', '\0', '\n', '\r']);
        if !usable {
            return Err(Error::Invalid {
                item: "repository name",
                reason: format!("{fqrn:?} cannot be used in key file names"),
            });
        }
        Ok(KeyFiles {
            master: dir.join(format!("{fqrn}.masterkey")),
            repo_key: dir.join(format!("{fqrn}.key")),
            master_public: dir.join(format!("{fqrn}.pub")),
            certificate: dir.join(format!("{fqrn}.crt")),
        })
    }
}

impl KeyFiles {
    /// Each file of `self` that does not exist replaced by `other`'s (which may not either).
    fn fill_missing(&mut self, other: KeyFiles) {
        let pick = |mine: &mut PathBuf, theirs: PathBuf| {
            if !mine.exists() {
                *mine = theirs;
            }
        };
        pick(&mut self.master, other.master);
        pick(&mut self.repo_key, other.repo_key);
        pick(&mut self.master_public, other.master_public);
        pick(&mut self.certificate, other.certificate);
    }
}

impl RepoKeys {
    /// New RSA-2048 master and repository keys and a self-signed certificate
    /// `CN=<fqrn> CernVM-FS Release Managers`, valid 365 days, signed with SHA-256.
    pub fn generate(fqrn: &str) -> Result<RepoKeys> {
        let master = generate_rsa("master key")?;
        let master_public = public_of(&master, "master key")?;
        let repo_key = generate_rsa("repository key")?;
        let certificate = build_certificate(fqrn, &repo_key)?;
        Ok(RepoKeys {
            master: Some(master),
            master_public,
            repo_key,
            certificate,
        })
    }

    /// Writes `FQRN.masterkey` (if present) and `FQRN.key` with mode 0600, `FQRN.pub` and
    /// `FQRN.crt` with mode 0644, creating `dir` with mode 0700 if needed. Refuses to overwrite
    /// any existing file; on failure removes the files it created.
    pub fn write(&self, dir: &Path, fqrn: &str) -> Result<()> {
        let files = KeyFiles::new(dir, fqrn)?;
        if !dir.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(io_at(dir))?;
        }
        let mut plan = Vec::with_capacity(4);
        if let Some(master) = &self.master {
            let pem = master
                .private_key_to_pem_pkcs8()
                .map_err(ossl(files.master.display().to_string()))?;
            plan.push((files.master, pem, PRIVATE_MODE));
        }
        let pem = self
            .repo_key
            .private_key_to_pem_pkcs8()
            .map_err(ossl(files.repo_key.display().to_string()))?;
        plan.push((files.repo_key, pem, PRIVATE_MODE));
        let pem = self
            .master_public
            .public_key_to_pem()
            .map_err(ossl(files.master_public.display().to_string()))?;
        plan.push((files.master_public, pem, PUBLIC_MODE));
        plan.push((files.certificate, self.certificate_pem()?, PUBLIC_MODE));
        // Check everything first so that a refusal leaves the directory untouched.
        if let Some((path, _, _)) = plan
            .iter()
            .find(|(path, _, _)| path.symlink_metadata().is_ok())
        {
            return Err(Error::Exists { path: path.clone() });
        }
        write_all_new(&plan)
    }

    /// Reads the keys written by `write` (or by `cvmfs_server`). `FQRN.masterkey` is optional;
    /// the certificate must hold the public half of `FQRN.key`, and a master key the public
    /// half in `FQRN.pub`.
    pub fn load(dir: &Path, fqrn: &str) -> Result<RepoKeys> {
        Self::load_from(&[dir], fqrn)
    }

    /// Like [`RepoKeys::load`], each file taken from the first of `dirs` that has it: the
    /// master key can then come from removable media (`--keys /media/usb`) while the
    /// repository key stays where it always is.
    pub fn load_from(dirs: &[&Path], fqrn: &str) -> Result<RepoKeys> {
        let mut found = dirs.iter().map(|d| KeyFiles::new(d, fqrn));
        let mut files = found.next().ok_or_else(|| Error::Invalid {
            item: "key directory",
            reason: "none given".to_string(),
        })??;
        for other in found {
            files.fill_missing(other?);
        }
        let repo_key = read_private_key(&files.repo_key)?;
        let certificate = parse_certificate_pem(&read(&files.certificate)?)
            .map_err(|err| at_path(err, &files.certificate))?;
        let master_public = load_public_key(&files.master_public)?;
        let master = match fs::read(&files.master) {
            Ok(pem) => Some(private_key_from_pem(&pem, &files.master)?),
            Err(err) if err.kind() == ErrorKind::NotFound => None,
            Err(err) => return Err(io_at(&files.master)(err)),
        };
        let cert_key = certificate
            .public_key()
            .map_err(ossl(files.certificate.display().to_string()))?;
        if !cert_key.public_eq(&repo_key) {
            return Err(Error::KeyMismatch {
                first: files.certificate,
                second: files.repo_key,
            });
        }
        if let Some(master) = &master {
            if !master_public.public_eq(master) {
                return Err(Error::KeyMismatch {
                    first: files.master_public,
                    second: files.master,
                });
            }
        }
        Ok(RepoKeys {
            master,
            master_public,
            repo_key,
            certificate,
        })
    }

    /// The certificate as PEM text (`-----BEGIN CERTIFICATE-----`), the content of the `X` object.
    pub fn certificate_pem(&self) -> Result<Vec<u8>> {
        self.certificate
            .to_pem()
            .map_err(ossl("certificate: encoding as PEM"))
    }

    /// The whitelist fingerprint of the certificate (see `certificate_fingerprint`).
    pub fn fingerprint(&self) -> Result<String> {
        certificate_fingerprint(&self.certificate)
    }
}

/// SHA-1 of the certificate's DER bytes as uppercase hex pairs joined by `:` (59 characters),
/// the form the whitelist lists.
pub fn certificate_fingerprint(cert: &X509) -> Result<String> {
    let digest = cert
        .digest(MessageDigest::sha1())
        .map_err(ossl("certificate: computing its fingerprint"))?;
    let pairs: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    Ok(pairs.join(":"))
}

/// A master public key, as [`load_public_key`] reads it and whitelists are verified with
/// (a name for crates that do not use openssl themselves).
pub type PublicKey = PKey<Public>;

/// Reads a master public key file (`-----BEGIN PUBLIC KEY-----`, what clients load with
/// `PEM_read_PUBKEY`; the PKCS#1 `BEGIN RSA PUBLIC KEY` form is refused like clients do).
pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    const LABEL: &[u8] = b"-----BEGIN PUBLIC KEY-----";
    let pem = read(path)?;
    let not_spki = || {
        ossl(format!(
            "{}: not a PEM public key (BEGIN PUBLIC KEY)",
            path.display()
        ))
    };
    // OpenSSL 3 would also take a PKCS#1 `BEGIN RSA PUBLIC KEY` block, which clients built
    // on older OpenSSL refuse: parse exactly the SPKI block.
    let Some(start) = pem.windows(LABEL.len()).position(|w| w == LABEL) else {
        return Err(Error::BadFile {
            path: path.to_path_buf(),
            reason: "no '-----BEGIN PUBLIC KEY-----' block (cvmfs needs the SPKI form)".to_string(),
        });
    };
    PKey::public_key_from_pem(&pem[start..]).map_err(not_spki())
}

/// Parses a PEM certificate (`-----BEGIN CERTIFICATE-----`).
pub fn parse_certificate_pem(pem: &[u8]) -> Result<X509> {
    X509::from_pem(pem).map_err(ossl("certificate: not a PEM X.509 certificate"))
}

fn generate_rsa(what: &str) -> Result<PKey<Private>> {
    // Rsa::generate uses the public exponent 65537.
    let rsa = Rsa::generate(RSA_BITS).map_err(ossl(format!("{what}: generating")))?;
    PKey::from_rsa(rsa).map_err(ossl(format!("{what}: generating")))
}

fn public_of(key: &PKey<Private>, what: &str) -> Result<PKey<Public>> {
    let der = key
        .public_key_to_der()
        .map_err(ossl(format!("{what}: extracting the public key")))?;
    PKey::public_key_from_der(&der).map_err(ossl(format!("{what}: extracting the public key")))
}

/// `<fqrn> CernVM-FS Release Managers`, the fqrn cut to 30 characters + `[...]` if longer.
fn common_name(fqrn: &str) -> String {
    let mut cn: String = fqrn.chars().take(CN_NAME_CHARS).collect();
    if fqrn.chars().count() > CN_NAME_CHARS {
        cn.push_str("[...]");
    }
    cn + " CernVM-FS Release Managers"
}

fn build_certificate(fqrn: &str, key: &PKey<Private>) -> Result<X509> {
    let fail = || ossl(format!("certificate for {fqrn}"));
    let mut name = X509NameBuilder::new().map_err(fail())?;
    name.append_entry_by_nid(Nid::COMMONNAME, &common_name(fqrn))
        .map_err(fail())?;
    let name = name.build();
    let mut serial = BigNum::new().map_err(fail())?;
    serial.rand(64, MsbOption::ONE, false).map_err(fail())?;
    let serial = serial.to_asn1_integer().map_err(fail())?;
    let not_before = Asn1Time::days_from_now(0).map_err(fail())?;
    let not_after = Asn1Time::days_from_now(CERT_DAYS).map_err(fail())?;

    let mut builder = X509Builder::new().map_err(fail())?;
    builder.set_version(2).map_err(fail())?; // X.509 v3
    builder.set_serial_number(&serial).map_err(fail())?;
    builder.set_subject_name(&name).map_err(fail())?;
    builder.set_issuer_name(&name).map_err(fail())?;
    builder.set_pubkey(key).map_err(fail())?;
    builder.set_not_before(&not_before).map_err(fail())?;
    builder.set_not_after(&not_after).map_err(fail())?;
    builder.sign(key, MessageDigest::sha256()).map_err(fail())?;
    Ok(builder.build())
}

/// Creates every planned file; if one fails, removes those created so far (only ours).
fn write_all_new(plan: &[(PathBuf, Vec<u8>, u32)]) -> Result<()> {
    for (done, (path, bytes, mode)) in plan.iter().enumerate() {
        if let Err(err) = write_new(path, bytes, *mode) {
            for (created, _, _) in &plan[..done] {
                let _ = fs::remove_file(created);
            }
            return Err(err);
        }
    }
    Ok(())
}

/// Creates `path` exclusively with `mode` from the start (a private key is never readable by
/// others, not even briefly), then fixes the mode against the umask.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|err| match err.kind() {
            ErrorKind::AlreadyExists => Error::Exists {
                path: path.to_path_buf(),
            },
            _ => io_at(path)(err),
        })?;
    file.set_permissions(Permissions::from_mode(mode))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .map_err(io_at(path))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(io_at(path))
}

fn read_private_key(path: &Path) -> Result<PKey<Private>> {
    private_key_from_pem(&read(path)?, path)
}

fn private_key_from_pem(pem: &[u8], path: &Path) -> Result<PKey<Private>> {
    // A callback that supplies no passphrase: an encrypted key fails instead of prompting.
    PKey::private_key_from_pem_callback(pem, |_| Ok(0)).map_err(ossl(format!(
        "{}: not an unencrypted PEM private key",
        path.display()
    )))
}

/// Re-labels an item-level error with the file it came from.
fn at_path(err: Error, path: &Path) -> Error {
    match err {
        Error::Openssl { source, .. } => Error::Openssl {
            item: format!("{}: not a PEM X.509 certificate", path.display()),
            source,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::test_keys::{keys, other_keys};

    const FQRN: &str = "test.example.org";

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn generated_certificate_matches_cvmfs_server() {
        let keys = keys();
        let cert = &keys.certificate;
        let cn = cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .unwrap();
        assert_eq!(
            cn.data().as_slice(),
            b"test.example.org CernVM-FS Release Managers"
        );
        let issuer = cert.issuer_name().to_der().unwrap();
        assert_eq!(issuer, cert.subject_name().to_der().unwrap());
        assert_eq!(cert.version(), 2, "X.509 v3");
        assert_eq!(
            cert.signature_algorithm().object().nid(),
            Nid::SHA256WITHRSAENCRYPTION
        );
        let validity = cert.not_before().diff(cert.not_after()).unwrap();
        assert_eq!((validity.days, validity.secs), (365, 0));
        assert_eq!(cert.serial_number().to_bn().unwrap().num_bits(), 64);
        let public = cert.public_key().unwrap();
        assert!(cert.verify(&public).unwrap(), "self-signed");
        assert!(public.public_eq(&keys.repo_key));
        for key in [&keys.repo_key, keys.master.as_ref().unwrap()] {
            let rsa = key.rsa().unwrap();
            assert_eq!(rsa.n().num_bits(), 2048);
            assert_eq!(rsa.e().to_dec_str().unwrap().to_string(), "65537");
        }
        assert!(keys.master_public.public_eq(keys.master.as_ref().unwrap()));
        assert!(!keys.master_public.public_eq(&keys.repo_key));
    }

    #[test]
    fn common_name_truncates_long_names() {
        let thirty = "abcdefghij.abcdefghij.abcdefgh";
        assert_eq!(thirty.len(), 30);
        assert_eq!(
            common_name(thirty),
            format!("{thirty} CernVM-FS Release Managers")
        );
        let long = format!("{thirty}x.example.org");
        assert_eq!(
            common_name(&long),
            format!("{thirty}[...] CernVM-FS Release Managers")
        );
        // The truncated form must be accepted as a CN (at most 64 characters).
        build_certificate(&long, &keys().repo_key).unwrap();
    }

    #[test]
    fn fingerprint_is_uppercase_sha1_of_der_with_colons() {
        let fp = keys().fingerprint().unwrap();
        assert_eq!(fp.len(), 59);
        let der = keys().certificate.to_der().unwrap();
        let expected = hex::encode_upper(openssl::sha::sha1(&der));
        assert_eq!(fp.replace(':', ""), expected);
        assert!(fp.split(':').all(|pair| pair.len() == 2));
        assert_ne!(fp, other_keys().fingerprint().unwrap());
    }

    #[test]
    fn write_creates_files_with_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new/keys");
        keys().write(&dir, FQRN).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(format!("{FQRN}.masterkey"))), 0o600);
        assert_eq!(mode(&dir.join(format!("{FQRN}.key"))), 0o600);
        assert_eq!(mode(&dir.join(format!("{FQRN}.pub"))), 0o644);
        assert_eq!(mode(&dir.join(format!("{FQRN}.crt"))), 0o644);
        let public = fs::read_to_string(dir.join(format!("{FQRN}.pub"))).unwrap();
        assert!(
            public.starts_with("-----BEGIN PUBLIC KEY-----\n"),
            "{public}"
        );
        let cert = fs::read(dir.join(format!("{FQRN}.crt"))).unwrap();
        assert_eq!(cert, keys().certificate_pem().unwrap());
        assert!(cert.starts_with(b"-----BEGIN CERTIFICATE-----\n"));
    }

    #[test]
    fn write_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        keys().write(tmp.path(), FQRN).unwrap();
        let err = other_keys().write(tmp.path(), FQRN).unwrap_err();
        assert!(matches!(err, Error::Exists { .. }), "{err}");
        let loaded = RepoKeys::load(tmp.path(), FQRN).unwrap();
        assert!(loaded.repo_key.public_eq(&keys().repo_key));

        // One pre-existing file blocks the whole set and is left as it was.
        let tmp = tempfile::tempdir().unwrap();
        let crt = tmp.path().join(format!("{FQRN}.crt"));
        fs::write(&crt, "keep").unwrap();
        let err = keys().write(tmp.path(), FQRN).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: already exists, refusing to overwrite", crt.display())
        );
        assert_eq!(fs::read_to_string(&crt).unwrap(), "keep");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn load_reads_back_what_write_wrote() {
        let tmp = tempfile::tempdir().unwrap();
        keys().write(tmp.path(), FQRN).unwrap();
        let loaded = RepoKeys::load(tmp.path(), FQRN).unwrap();
        assert!(loaded
            .master
            .as_ref()
            .unwrap()
            .public_eq(keys().master.as_ref().unwrap()));
        assert!(loaded.master_public.public_eq(&keys().master_public));
        assert!(loaded.repo_key.public_eq(&keys().repo_key));
        assert_eq!(
            loaded.certificate.to_der().unwrap(),
            keys().certificate.to_der().unwrap()
        );
        assert_eq!(loaded.fingerprint().unwrap(), keys().fingerprint().unwrap());

        fs::remove_file(tmp.path().join(format!("{FQRN}.masterkey"))).unwrap();
        let publisher_only = RepoKeys::load(tmp.path(), FQRN).unwrap();
        assert!(publisher_only.master.is_none());
        // Writing keys without a master key writes the other three files only.
        let tmp2 = tempfile::tempdir().unwrap();
        publisher_only.write(tmp2.path(), FQRN).unwrap();
        assert_eq!(fs::read_dir(tmp2.path()).unwrap().count(), 3);
    }

    #[test]
    fn load_detects_mismatched_files() {
        let tmp = tempfile::tempdir().unwrap();
        keys().write(tmp.path(), FQRN).unwrap();
        let crt = tmp.path().join(format!("{FQRN}.crt"));
        fs::write(&crt, other_keys().certificate_pem().unwrap()).unwrap();
        let err = RepoKeys::load(tmp.path(), FQRN).unwrap_err();
        let key = tmp.path().join(format!("{FQRN}.key"));
        assert_eq!(
            err.to_string(),
            format!(
                "{}: public key does not match {}",
                crt.display(),
                key.display()
            )
        );

        let tmp = tempfile::tempdir().unwrap();
        keys().write(tmp.path(), FQRN).unwrap();
        let public = tmp.path().join(format!("{FQRN}.pub"));
        fs::write(
            &public,
            other_keys().master_public.public_key_to_pem().unwrap(),
        )
        .unwrap();
        let err = RepoKeys::load(tmp.path(), FQRN).unwrap_err();
        assert!(
            matches!(&err, Error::KeyMismatch { first, .. } if first == &public),
            "{err}"
        );
    }

    #[test]
    fn load_errors_name_the_file_and_leak_no_key_material() {
        let tmp = tempfile::tempdir().unwrap();
        let err = RepoKeys::load(tmp.path(), FQRN).unwrap_err();
        let key = tmp.path().join(format!("{FQRN}.key"));
        assert!(
            matches!(&err, Error::Io { path, .. } if path == &key),
            "{err}"
        );

        keys().write(tmp.path(), FQRN).unwrap();
        let pem = fs::read_to_string(&key).unwrap();
        // Damage the base64 body so the PEM no longer decodes.
        let damaged = pem.replacen('A', "*", 3).replacen('M', "*", 3);
        fs::write(&key, &damaged).unwrap();
        let err = RepoKeys::load(tmp.path(), FQRN).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains(&key.display().to_string()), "{text}");
        for line in damaged.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!text.contains(&line[..16]), "key material in error: {text}");
        }
    }

    #[test]
    fn public_key_must_be_spki_pem() {
        let tmp = tempfile::tempdir().unwrap();
        let spki = tmp.path().join("spki.pub");
        fs::write(&spki, keys().master_public.public_key_to_pem().unwrap()).unwrap();
        assert!(load_public_key(&spki)
            .unwrap()
            .public_eq(&keys().master_public));
        let pkcs1 = tmp.path().join("pkcs1.pub");
        let rsa = keys().master_public.rsa().unwrap();
        fs::write(&pkcs1, rsa.public_key_to_pem_pkcs1().unwrap()).unwrap();
        let err = load_public_key(&pkcs1).unwrap_err();
        assert!(
            err.to_string().starts_with(&pkcs1.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn parse_certificate_pem_round_trips_and_rejects_junk() {
        let pem = keys().certificate_pem().unwrap();
        let cert = parse_certificate_pem(&pem).unwrap();
        assert_eq!(cert.to_der().unwrap(), keys().certificate.to_der().unwrap());
        assert!(parse_certificate_pem(b"-----BEGIN CERTIFICATE-----\nxx\n").is_err());
    }

    #[test]
    fn unusable_repository_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for fqrn in ["", ".", "..", "a/b"] {
            let err = keys().write(tmp.path(), fqrn).unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{fqrn:?}: {err}");
        }
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
