//! `check_repository`: the verifications of `cvmfs_swissknife check` (spec Appendix B) over any
//! [`ObjectStore`], plus the client's signature chain (manifest → certificate → whitelist →
//! master keys).

use crate::catalogs::{walk_catalogs, Expect};
use crate::error::{Error, Result};
use crate::history::{History, TRUNK};
use crate::reflog::{RefKind, Reflog};
use crate::store::{root_files, stored_bound, ObjectStore, StoreObjects};
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::namespace::CatalogRef;
use openssl::pkey::{PKey, Public};
use openssl::x509::X509;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet};

/// Largest certificate / meta-info object we inflate.
const MAX_SMALL_OBJECT: u64 = 64 << 20;
/// Largest data object inflated when its size is unknown.
const MAX_UNKNOWN_OBJECT: u64 = 16 << 30;

/// Result of a check; the repository is fine when `problems` is empty.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// One line per problem, naming the file or object.
    pub problems: Vec<String>,
    /// States that are not problems but worth a line, e.g. a `.cvmfsreflog` newer than the
    /// manifest after a commit that stopped between the two renames.
    pub notes: Vec<String>,
    /// Manifest `S` (0 if the manifest could not be read).
    pub revision: u64,
    /// Catalogs loaded.
    pub catalogs: usize,
    /// Catalog rows over all catalogs.
    pub entries: u64,
    /// Distinct objects referenced (catalogs, data, chunks, certificate, history, meta-info).
    pub objects: usize,
    /// Stored bytes read: every referenced object with `full`, catalogs and metadata otherwise.
    pub bytes: u64,
    /// The whitelist is signed by a trusted master key and names the repository, but has
    /// expired (also one of `problems`; its certificate fingerprints were not checked).
    pub whitelist_expired: bool,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the repository in `store` named `fqrn`, trusting the master keys `masters`.
/// With `full`, every referenced object is re-hashed and inflated as well.
///
/// Problems in the repository are reported in [`CheckReport::problems`]; `Err` is returned
/// only when the check itself cannot run (e.g. no temporary directory).
pub fn check_repository(
    store: &dyn ObjectStore,
    fqrn: &str,
    masters: &[PKey<Public>],
    full: bool,
) -> Result<CheckReport> {
    // Catalogs, history and reflog are read through temporary databases: without a place
    // for them every one would look damaged, so that is this machine's error, not a
    // problem of the repository.
    crate::tempdb::TempDb::create("check's scratch database")?;
    let mut c = Checker::new(store, fqrn);
    c.run(masters, full);
    Ok(c.report)
}

/// The manifest of the repository `fqrn` in `store`, once it is verified as `check` verifies
/// it first: it names `fqrn`, its certificate signs it, and a whitelist signed by one of
/// `masters` lists that certificate and has not expired. For commands that only read a
/// revision (`diff`, `list-catalogs`), so that a forged storage is refused instead of shown as
/// fact. The manifest is read once and what was verified is returned, so a server cannot
/// answer a later read with another one.
///
/// Every problem found is in the error, on one line, after the storage's name.
pub fn verified_manifest(
    store: &dyn ObjectStore,
    fqrn: &str,
    masters: &[PKey<Public>],
) -> Result<signer::Manifest> {
    let mut c = Checker::new(store, fqrn);
    let read = c.read_manifest();
    if let Some((bytes, manifest)) = &read {
        c.check_name_and_signatures(bytes, manifest, masters);
    }
    match read {
        Some((_, manifest)) if c.report.problems.is_empty() => Ok(manifest),
        _ => Err(Error::signature(
            format!("{}: not verified", store.describe()),
            c.report.problems.join("; "),
        )),
    }
}

struct Checker<'a> {
    store: &'a dyn ObjectStore,
    fqrn: &'a str,
    report: CheckReport,
    objects: BTreeMap<(ContentHash, Suffix), Expect>,
    /// Objects whose reading already failed with a problem of their own: the object pass
    /// does not report them a second time.
    reported: HashSet<(ContentHash, Suffix)>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Parses a manifest hash field (no suffix); `None` for a missing field.
fn parse_hash(field: &str, text: Option<&str>, problems: &mut Vec<String>) -> Option<ContentHash> {
    let text = text?;
    let h = ContentHash::from_hex(text);
    if h.is_none() {
        problems.push(format!(
            ".cvmfspublished: {field} is not a SHA-1 hash text: {text:?}"
        ));
    }
    h
}

impl<'a> Checker<'a> {
    fn new(store: &'a dyn ObjectStore, fqrn: &'a str) -> Self {
        Checker {
            store,
            fqrn,
            report: CheckReport::default(),
            objects: BTreeMap::new(),
            reported: HashSet::new(),
        }
    }

    fn problem(&mut self, p: String) {
        self.report.problems.push(p);
    }

    fn root_file(&mut self, name: &str) -> Option<Vec<u8>> {
        match self.store.get_root_file(name) {
            Ok(b) => b,
            Err(e) => {
                self.problem(format!("{name}: {e}"));
                None
            }
        }
    }

    /// Reads a metadata object (certificate, history, meta-info) and checks its name.
    fn meta_object(&mut self, hash: &ContentHash, suffix: Suffix) -> Option<Vec<u8>> {
        let path = hash.object_path(suffix);
        let stored = match self
            .store
            .get_at_most(hash, suffix, stored_bound(MAX_SMALL_OBJECT))
        {
            Ok(b) => b,
            Err(e) => {
                self.reported.insert((*hash, suffix));
                self.problem(format!("{path}: cannot read: {e}"));
                return None;
            }
        };
        self.report.bytes += stored.len() as u64;
        if ContentHash::of(&stored) != *hash {
            self.reported.insert((*hash, suffix));
            self.problem(format!(
                "{path}: stored bytes hash to {}",
                ContentHash::of(&stored)
            ));
            return None;
        }
        match catalog_writer::zlib::decompress(&stored, MAX_SMALL_OBJECT) {
            Ok(raw) => Some(raw),
            Err(e) => {
                self.reported.insert((*hash, suffix));
                self.problem(format!("{path}: does not inflate: {e}"));
                None
            }
        }
    }

    /// The manifest's bytes and fields; `None` (and a problem) when it is missing or does not
    /// parse.
    fn read_manifest(&mut self) -> Option<(Vec<u8>, signer::Manifest)> {
        let Some(bytes) = self.root_file(root_files::MANIFEST) else {
            if self.report.problems.is_empty() {
                self.problem(format!("{}: no .cvmfspublished", self.store.describe()));
            }
            return None;
        };
        match signer::Manifest::parse(&bytes) {
            Ok(s) => Some((bytes, s.manifest)),
            Err(e) => {
                self.problem(format!(".cvmfspublished: {e}"));
                None
            }
        }
    }

    fn run(&mut self, masters: &[PKey<Public>], full: bool) {
        let Some((bytes, manifest)) = self.read_manifest() else {
            return;
        };
        self.report.revision = manifest.revision;
        if bytes.len() >= 4096 {
            // cvmfs_swissknife check reads the manifest through a 4 KiB buffer.
            self.problem(format!(
                ".cvmfspublished: {} bytes, must stay below 4096",
                bytes.len()
            ));
        }
        self.check_name_and_signatures(&bytes, &manifest, masters);
        let mut hash_problems = Vec::new();
        let root = parse_hash("C", Some(&manifest.root_catalog), &mut hash_problems);
        let history = parse_hash("H", manifest.history.as_deref(), &mut hash_problems);
        let meta = parse_hash("M", manifest.meta_info.as_deref(), &mut hash_problems);
        self.report.problems.extend(hash_problems);
        if let Some(root) = root {
            self.check_root_catalog(&manifest, root);
            self.check_history(history, root);
        }
        if let Some(m) = meta {
            self.objects.insert(
                (m, Suffix::MetaInfo),
                Expect {
                    size: None,
                    compressed: true,
                },
            );
            self.meta_object(&m, Suffix::MetaInfo);
        }
        self.check_reflog(&manifest, root, history, meta);
        if manifest.alt {
            self.check_alt_links(&manifest, root);
        }
        self.check_objects(full);
    }

    /// The manifest names this repository, and is signed as clients require (see
    /// [`Checker::check_signatures`]).
    fn check_name_and_signatures(
        &mut self,
        bytes: &[u8],
        manifest: &signer::Manifest,
        masters: &[PKey<Public>],
    ) {
        if manifest.fqrn != self.fqrn {
            self.problem(format!(
                ".cvmfspublished: N is {:?}, expected {:?}",
                manifest.fqrn, self.fqrn
            ));
        }
        self.check_signatures(bytes, manifest, masters);
    }

    /// Manifest signature via the certificate `X`, whitelist via the master keys, and the
    /// certificate fingerprint in the whitelist.
    fn check_signatures(
        &mut self,
        bytes: &[u8],
        manifest: &signer::Manifest,
        masters: &[PKey<Public>],
    ) {
        let mut problems = Vec::new();
        let x = parse_hash("X", Some(&manifest.certificate), &mut problems);
        self.report.problems.extend(problems);
        let Some(x) = x else { return };
        self.objects.insert(
            (x, Suffix::Certificate),
            Expect {
                size: None,
                compressed: true,
            },
        );
        let Some(pem) = self.meta_object(&x, Suffix::Certificate) else {
            return;
        };
        let cert = match signer::parse_certificate_pem(&pem) {
            Ok(c) => c,
            Err(e) => {
                return self.problem(format!("{}: {e}", x.object_path(Suffix::Certificate)));
            }
        };
        if let Err(e) = signer::Manifest::verify(bytes, &cert) {
            self.problem(format!(".cvmfspublished: {e}"));
        }
        self.check_whitelist(&cert, masters);
    }

    fn check_whitelist(&mut self, cert: &X509, masters: &[PKey<Public>]) {
        let Some(bytes) = self.root_file(root_files::WHITELIST) else {
            if !self
                .report
                .problems
                .iter()
                .any(|p| p.starts_with(root_files::WHITELIST))
            {
                self.problem(".cvmfswhitelist: missing".to_string());
            }
            return;
        };
        if masters.is_empty() {
            self.problem(".cvmfswhitelist: no master public key given to verify it".to_string());
            return;
        }
        let whitelist = match signer::Whitelist::verify(&bytes, masters, self.fqrn, now_unix()) {
            Ok(w) => w,
            Err(e) => {
                self.report.whitelist_expired = matches!(e, signer::Error::Expired { .. });
                return self.problem(format!(".cvmfswhitelist: {e}"));
            }
        };
        match signer::certificate_fingerprint(cert) {
            Ok(fp) if whitelist.lists_fingerprint(&fp) => {}
            Ok(fp) => self.problem(format!(
                ".cvmfswhitelist: does not list the certificate fingerprint {fp}"
            )),
            Err(e) => self.problem(format!("certificate: {e}")),
        }
    }

    /// Root catalog: `B` and `S` agree with the catalog; then the whole tree is walked.
    fn check_root_catalog(&mut self, manifest: &signer::Manifest, root: ContentHash) {
        let root_ref = CatalogRef {
            hash: root,
            size: manifest.root_size,
        };
        // A root catalog that cannot be loaded is reported by the walk below, with its path.
        if let Ok(cat) = crate::catalogs::load_catalog(self.store, &root_ref) {
            match cat.property("revision") {
                Ok(Some(r)) if r.parse::<u64>().ok() == Some(manifest.revision) => {}
                Ok(r) => self.problem(format!(
                    "root catalog {root}: revision {r:?} differs from manifest S{}",
                    manifest.revision
                )),
                Err(e) => self.problem(e.to_string()),
            }
        }
        let walk = walk_catalogs(self.store, root_ref);
        self.report.catalogs = walk.catalogs;
        self.report.entries = walk.entries;
        self.report.bytes += walk.catalog_bytes;
        self.report.problems.extend(walk.problems);
        self.objects.extend(walk.objects);
        let unreadable = walk.unreadable.into_iter().map(|c| (c, Suffix::Catalog));
        self.reported.extend(unreadable);
        if walk_loaded_root(&self.report) {
            let structural = structural_catalog_problems(self.store, root_ref);
            self.report.problems.extend(structural);
        }
    }

    fn check_history(&mut self, history: Option<ContentHash>, root: ContentHash) {
        let Some(h) = history else { return };
        self.objects.insert(
            (h, Suffix::History),
            Expect {
                size: None,
                compressed: true,
            },
        );
        let hist = match History::load(self.store, &h) {
            Ok(hist) => hist,
            Err(e) => {
                self.reported.insert((h, Suffix::History));
                return self.problem(e.to_string());
            }
        };
        self.report.problems.extend(hist.problems());
        match hist.tag(TRUNK) {
            Ok(Some(t)) if t.hash == root => {}
            Ok(Some(t)) => self.problem(format!(
                "history {h}: trunk names {} but the manifest root catalog is {root}",
                t.hash
            )),
            Ok(None) => {}
            Err(e) => self.problem(e.to_string()),
        }
    }

    fn check_reflog(
        &mut self,
        manifest: &signer::Manifest,
        root: Option<ContentHash>,
        history: Option<ContentHash>,
        meta: Option<ContentHash>,
    ) {
        let Some(bytes) = self.root_file(root_files::REFLOG) else {
            if manifest.reflog.is_some() {
                self.problem(".cvmfspublished: Y is set but there is no .cvmfsreflog".to_string());
            }
            return;
        };
        let log = match Reflog::from_bytes(&bytes, root_files::REFLOG) {
            Ok(l) => l,
            Err(e) => return self.problem(e.to_string()),
        };
        let actual = ContentHash::of(&bytes);
        let problems_before = self.report.problems.len();
        let mismatch = match manifest.reflog.as_deref() {
            None => {
                self.problem(".cvmfsreflog exists but the manifest has no Y".to_string());
                None
            }
            Some(y) if y == actual.to_hex() => None,
            Some(y) => Some(format!(
                ".cvmfsreflog: hashes to {actual}, manifest Y is {y}"
            )),
        };
        let cert = ContentHash::from_hex(&manifest.certificate);
        let wanted = [
            (root, RefKind::Catalog, "root catalog"),
            (cert, RefKind::Certificate, "certificate"),
            (history, RefKind::History, "history"),
            (meta, RefKind::MetaInfo, "meta-info"),
        ];
        for (hash, kind, label) in wanted {
            let Some(hash) = hash else { continue };
            match log.contains(&hash, kind) {
                Ok(true) => {}
                Ok(false) => {
                    self.problem(format!(".cvmfsreflog: does not list the {label} {hash}"))
                }
                Err(e) => self.problem(e.to_string()),
            }
        }
        // The reflog is renamed into place right before the manifest: a commit stopped
        // between the two leaves a reflog with more references than the manifest's `Y` names,
        // which the next commit or `gc` rewrites. Clients never read the reflog.
        if let Some(m) = mismatch {
            if self.report.problems.len() == problems_before {
                self.report.notes.push(format!(
                    "{m}: the reflog lists everything this revision needs and more (a commit \
                     stopped before its manifest; `cvmfs_swissknife check` fails on it); the next publish or `gc` signs it"
                ));
            } else {
                self.problem(m);
            }
        }
    }

    fn check_alt_links(&mut self, manifest: &signer::Manifest, root: Option<ContentHash>) {
        let cert = ContentHash::from_hex(&manifest.certificate);
        for (hash, suffix) in [(root, "C"), (cert, "X")] {
            let Some(hash) = hash else { continue };
            let name = format!(".cvmfsalt-{hash}{suffix}");
            if let Ok(None) = self.store.get_root_file(&name) {
                self.problem(format!("manifest A=yes but {name} is missing"));
            }
        }
    }

    /// Existence (or, with `full`, hash + inflated size) of every referenced object.
    fn check_objects(&mut self, full: bool) {
        self.report.objects = self.objects.len();
        let store = self.store;
        let reported = &self.reported;
        let results: Vec<(u64, Option<String>)> = self
            .objects
            .par_iter()
            .map(|(key @ (hash, suffix), expect)| {
                let already = reported.contains(key);
                if full {
                    // Read even so: `bytes` counts every referenced object.
                    let (n, problem) = verify_object(store, hash, *suffix, expect);
                    (n, problem.filter(|_| !already))
                } else if already {
                    (0, None)
                } else {
                    (0, exists_problem(store, hash, *suffix))
                }
            })
            .collect();
        if full {
            // Every referenced object was read here, so this total replaces the partial one.
            self.report.bytes = results.iter().map(|r| r.0).sum();
        }
        for (_, problem) in results {
            if let Some(p) = problem {
                self.report.problems.push(p);
            }
        }
    }
}

/// The structural verifier only adds noise when not even the root catalog could be read.
fn walk_loaded_root(report: &CheckReport) -> bool {
    report.catalogs > 0
}

fn exists_problem(store: &dyn ObjectStore, hash: &ContentHash, suffix: Suffix) -> Option<String> {
    match store.contains(hash, suffix) {
        Ok(true) => None,
        Ok(false) => Some(format!("{}: missing", hash.object_path(suffix))),
        Err(e) => Some(format!("{}: {e}", hash.object_path(suffix))),
    }
}

/// The size `stored` inflates to, counted as it inflates: never held (a 1 MB object of
/// zeros that a catalog declares as 2 GiB would otherwise cost 2 GiB, for every object
/// `--full` checks at once).
fn inflated_size(stored: &[u8], limit: u64) -> std::io::Result<u64> {
    use std::io::Read;
    let mut inflated = flate2::read::ZlibDecoder::new(stored).take(limit.saturating_add(1));
    let size = std::io::copy(&mut inflated, &mut std::io::sink())?;
    if size > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("inflated object exceeds {limit} bytes"),
        ));
    }
    Ok(size)
}

/// Re-hashes the stored bytes and inflates them; returns the stored size and any problem.
fn verify_object(
    store: &dyn ObjectStore,
    hash: &ContentHash,
    suffix: Suffix,
    expect: &Expect,
) -> (u64, Option<String>) {
    let path = hash.object_path(suffix);
    let limit = expect.size.unwrap_or(MAX_UNKNOWN_OBJECT);
    let stored_limit = if expect.compressed {
        stored_bound(limit)
    } else {
        limit
    };
    let stored = match store.get_at_most(hash, suffix, stored_limit) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (0, Some(format!("{path}: missing")))
        }
        Err(e) => return (0, Some(format!("{path}: cannot read: {e}"))),
    };
    let n = stored.len() as u64;
    let actual = ContentHash::of(&stored);
    if actual != *hash {
        return (n, Some(format!("{path}: stored bytes hash to {actual}")));
    }
    let plain_len = if expect.compressed {
        match inflated_size(&stored, limit) {
            Ok(size) => size,
            Err(e) => return (n, Some(format!("{path}: does not inflate: {e}"))),
        }
    } else {
        n
    };
    match expect.size {
        Some(size) if size != plain_len => (
            n,
            Some(format!(
                "{path}: content is {plain_len} bytes, catalog says {size}"
            )),
        ),
        _ => (n, None),
    }
}

/// Structural catalog rules (spec Appendix B, per catalog), from the catalog writer's
/// verifier, which owns the catalog format. Object existence and sizes are checked here.
fn structural_catalog_problems(store: &dyn ObjectStore, root: CatalogRef) -> Vec<String> {
    catalog_writer::verify::verify(root, &StoreObjects(store))
        .problems
        .iter()
        .map(|p| p.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflated_sizes_are_counted_not_held() {
        let zeros = catalog_writer::zlib::compress(&vec![0u8; 8 << 20]);
        assert_eq!(inflated_size(&zeros, 8 << 20).unwrap(), 8 << 20);
        let err = inflated_size(&zeros, (8 << 20) - 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exceeds"), "{err}");
        let mut broken = zeros.clone();
        let last = broken.len() - 1;
        broken[last] ^= 1; // the Adler-32
        assert!(inflated_size(&broken, 8 << 20).is_err());
        assert!(inflated_size(b"not zlib", 100).is_err());
    }
}
